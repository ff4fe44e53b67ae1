//! Long reads of the disk log, checked as they are sent, a piece of up to 1 MiB at a time. Checked
//! whole before its first byte is sent, a 16 MiB record held a runtime thread for over a millisecond
//! (and a 1 GiB large file a blocking thread for a tenth of a second) and was read from memory twice,
//! the send finding none of it in the cache. Now the first byte leaves once one piece is checked, and
//! each piece is sent soon after the checksum has read it.
//! - A segment record has one checksum, so its last piece is held until the whole payload checks out:
//!   a damaged record never completes a read but ends it with an error, as reads through
//!   `layers::verify` do.
//! - A large file has a checksum per 1 MiB chunk, so each piece is checked before it is sent.
//!
//! Either way a damaged value's entry is dropped, as one found damaged before a read is. Reads of
//! up to one piece, and of segment records about to be copied forward (which must not copy bytes
//! before they are checked), are checked whole first and report a damaged value as missing.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

use super::large::{self, CHUNK};
use super::record::Form;
use super::DiskLog;
use crate::digest::{Digest, Key};
use crate::error::{Result, StoreError};
use crate::offload;
use crate::store::Blob;

/// Pieces of this size: the ByteStream service's messages, which it then sends as they are.
pub const PIECE: usize = 1 << 20;
const _: () = assert!(PIECE as u64 == CHUNK, "a large file's pieces are its chunks");

impl DiskLog {
    /// `digest[offset..offset + limit]` checked as it is sent, where the read is longer than one
    /// piece, the value is stored as it is and it is not a segment record due to be copied forward (an
    /// old large blob is renewed, which reads nothing). `None` for every other read (the caller then
    /// checks the value whole first).
    pub(super) async fn read_checked_as_sent(&self, digest: &Digest, key: &Key, offset: u64, limit: Option<u64>) -> Option<Blob> {
        let end = limit.map_or(digest.size, |l| offset.saturating_add(l).min(digest.size));
        if end.saturating_sub(offset) <= PIECE as u64 {
            return None;
        }
        let place = {
            let st = self.inner.state.read();
            match st.index.get(key) {
                Some(loc) => Ok((st.segments.get(&loc.segment)?.clone(), loc)),
                None => Err(*st.large.get(key)?),
            }
        };
        match &place {
            Ok((_, loc)) if self.is_old(loc.segment) => return None,
            // Renewing a large blob's place reads none of its bytes.
            Err(entry) if self.is_old(entry.seq) => self.renew_large(key),
            _ => {}
        }
        let range = offset as usize..end as usize;
        let (log, key, digest) = (Arc::downgrade(&self.inner), *key, *digest);
        let corrupt = move |what: &str| StoreError::Corrupt { digest, tier: "disk".into(), reason: format!("{what} does not match its checksum; dropped") };
        let pieces = match place {
            Ok((segment, loc)) => {
                let (header, payload) = segment.unchecked(loc, &key)?;
                if header.form != Form::Identity || header.payload_len != digest.size || payload.len() as u64 != digest.size {
                    return None;
                }
                let damaged = move || {
                    tracing::warn!(segment = %segment.path.display(), offset = loc.offset, "damaged record dropped while it was read");
                    if let Some(inner) = log.upgrade() {
                        inner.state.write().index.remove(&key, loc);
                    }
                    corrupt("the record")
                };
                checked_pieces(payload, header.payload_crc, range, damaged)
            }
            Err(_) => {
                let dir = self.large_dir().to_path_buf();
                let file = offload::blocking("opening a large blob", move || Ok(large::open_large(&dir, &key))).await.ok()??;
                let table = file.table.filter(|_| file.payload.len() as u64 == digest.size)?;
                let this = self.clone();
                let damaged = move |chunk: usize| {
                    this.forget_large(&key, "damaged");
                    corrupt(&format!("chunk {chunk} of the large file"))
                };
                chunk_checked_pieces(file.payload, table, range, damaged)
            }
        };
        Some(Blob::Stream(pieces))
    }
}

/// `payload[range]` in pieces of at most `PIECE`, all of `payload` checked against `crc` by the time
/// the last piece is handed out; in its place comes the error `damaged` makes when it does not check
/// out. `range` lies within the payload and is not empty.
pub fn checked_pieces<F>(payload: Bytes, crc: u32, range: Range<usize>, damaged: F) -> BoxStream<'static, Result<Bytes>>
where
    F: FnOnce() -> StoreError + Send + 'static,
{
    let pieces = CheckedPieces { payload, crc, hasher: crc32fast::Hasher::new(), checked: 0, at: range.start, end: range.end, damaged: Some(damaged) };
    futures::stream::iter(pieces).boxed()
}

struct CheckedPieces<F> {
    payload: Bytes,
    crc: u32,
    hasher: crc32fast::Hasher,
    /// The payload is checksummed up to here.
    checked: usize,
    /// The next piece starts here.
    at: usize,
    end: usize,
    /// Taken when the check fails, so the error comes once and then the stream ends.
    damaged: Option<F>,
}

impl<F: FnOnce() -> StoreError> Iterator for CheckedPieces<F> {
    type Item = Result<Bytes>;

    fn next(&mut self) -> Option<Result<Bytes>> {
        if self.at >= self.end {
            return None;
        }
        let next = (self.at + PIECE).min(self.end);
        // The bytes before the range (a read from an offset) go with the first piece, the bytes
        // after it (a read with a limit) with the last.
        let to = if next == self.end { self.payload.len() } else { next };
        self.hasher.update(&self.payload[self.checked..to]);
        self.checked = to;
        if to == self.payload.len() && std::mem::take(&mut self.hasher).finalize() != self.crc {
            self.at = self.end;
            return self.damaged.take().map(|damaged| Err(damaged()));
        }
        let piece = self.payload.slice(self.at..next);
        self.at = next;
        Some(Ok(piece))
    }
}

/// `payload[range]` a chunk (or the part of one in the range) at a time, each chunk checked against
/// its entry in `table` before any of it is handed out; `damaged` makes the error that ends the
/// stream at the first chunk that does not check out (it is given the chunk's number).
pub fn chunk_checked_pieces<F>(payload: Bytes, table: Bytes, range: Range<usize>, damaged: F) -> BoxStream<'static, Result<Bytes>>
where
    F: FnOnce(usize) -> StoreError + Send + 'static,
{
    let mut damaged = Some(damaged);
    let (mut at, end) = (range.start, range.end);
    let pieces = std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let chunk = at / PIECE;
        let next = ((chunk + 1) * PIECE).min(end);
        if !large::chunk_intact(&payload, &table, chunk) {
            at = end;
            return damaged.take().map(|damaged| Err(damaged(chunk)));
        }
        let piece = payload.slice(at..next);
        at = next;
        Some(Ok(piece))
    });
    futures::stream::iter(pieces).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn payload(len: usize) -> Bytes {
        Bytes::from((0..len).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>())
    }

    /// Every piece handed out, and the error if one came (and whether it came last).
    async fn collect(stream: BoxStream<'static, Result<Bytes>>) -> (Vec<Bytes>, Option<StoreError>) {
        let items: Vec<Result<Bytes>> = stream.collect().await;
        let count = items.len();
        let mut pieces = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Ok(piece) => pieces.push(piece),
                Err(e) => {
                    assert_eq!(i, count - 1, "the error ends the stream");
                    return (pieces, Some(e));
                }
            }
        }
        (pieces, None)
    }

    fn damaged_error(calls: &Arc<AtomicUsize>) -> impl FnOnce() -> StoreError + Send + 'static {
        let calls = calls.clone();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let digest = DigestFunction::Sha256.digest_of(b"");
            StoreError::Corrupt { digest, tier: "disk".into(), reason: "test".into() }
        }
    }

    const LEN: usize = 3 * PIECE + 12_345;

    fn ranges() -> Vec<Range<usize>> {
        vec![0..LEN, 0..PIECE + 1, 17..LEN, PIECE..2 * PIECE + 1, LEN - PIECE - 1..LEN, 5..PIECE + 6]
    }

    #[tokio::test]
    async fn an_intact_payload_is_served_whole_in_pieces_of_at_most_one_piece() {
        let data = payload(LEN);
        let crc = crc32fast::hash(&data);
        for range in ranges() {
            let calls = Arc::new(AtomicUsize::new(0));
            let (pieces, error) = collect(checked_pieces(data.clone(), crc, range.clone(), damaged_error(&calls))).await;
            assert!(error.is_none(), "{range:?}");
            assert!(pieces.iter().all(|p| !p.is_empty() && p.len() <= PIECE), "{range:?}");
            assert_eq!(pieces.concat(), &data[range.clone()], "{range:?}");
            assert_eq!(calls.load(Ordering::SeqCst), 0);
        }
    }

    /// Damage anywhere in the payload, inside the range or outside it, withholds the range's last
    /// piece: the caller never receives a whole range of a damaged record.
    #[tokio::test]
    async fn damage_anywhere_ends_the_read_before_its_last_piece() {
        let data = payload(LEN);
        let crc = crc32fast::hash(&data);
        for at in [0, 16, PIECE, 2 * PIECE + 3, LEN - 1] {
            let mut bad = data.to_vec();
            bad[at] ^= 0x40;
            let bad = Bytes::from(bad);
            for range in ranges() {
                let calls = Arc::new(AtomicUsize::new(0));
                let (pieces, error) = collect(checked_pieces(bad.clone(), crc, range.clone(), damaged_error(&calls))).await;
                assert!(matches!(error, Some(StoreError::Corrupt { .. })), "damage at {at}, {range:?}");
                assert_eq!(calls.load(Ordering::SeqCst), 1, "damage at {at}, {range:?}");
                let sent: usize = pieces.iter().map(Bytes::len).sum();
                assert!(sent < range.len(), "damage at {at}, {range:?}: {sent} bytes sent");
                assert_eq!(pieces.len(), range.len().div_ceil(PIECE) - 1, "every piece but the last");
            }
        }
    }

    fn table_of(data: &[u8]) -> Bytes {
        Bytes::from(data.chunks(PIECE).flat_map(|c| crc32fast::hash(c).to_le_bytes()).collect::<Vec<u8>>())
    }

    /// A large file's pieces: each chunk checked before any of it goes out, so damage ends the read
    /// at the damaged chunk, after the intact ones before it.
    #[tokio::test]
    async fn a_large_file_is_served_a_checked_chunk_at_a_time() {
        let data = payload(LEN);
        let table = table_of(&data);
        for range in ranges() {
            let stream = chunk_checked_pieces(data.clone(), table.clone(), range.clone(), |_| unreachable!("intact"));
            let (pieces, error) = collect(stream).await;
            assert!(error.is_none() && pieces.iter().all(|p| !p.is_empty() && p.len() <= PIECE), "{range:?}");
            assert_eq!(pieces.concat(), &data[range.clone()], "{range:?}");
        }
        for damaged_chunk in 0..4 {
            let mut bad = data.to_vec();
            bad[damaged_chunk * PIECE + 7] ^= 0x40;
            let bad = Bytes::from(bad);
            for range in ranges() {
                let touched = range.start / PIECE..range.end.div_ceil(PIECE);
                let calls = Arc::new(AtomicUsize::new(0));
                let counted = damaged_error(&calls);
                let stream = chunk_checked_pieces(bad.clone(), table.clone(), range.clone(), move |chunk| {
                    assert_eq!(chunk, damaged_chunk);
                    counted()
                });
                let (pieces, error) = collect(stream).await;
                let served = pieces.concat();
                if touched.contains(&damaged_chunk) {
                    assert!(error.is_some(), "chunk {damaged_chunk}, {range:?}");
                    let intact_end = (damaged_chunk * PIECE).max(range.start);
                    assert_eq!(served, &data[range.start..intact_end], "chunk {damaged_chunk}, {range:?}: the intact chunks before it");
                } else {
                    assert!(error.is_none() && served == data[range.clone()], "chunk {damaged_chunk}, {range:?}: not read, not checked");
                }
            }
        }
    }

    #[test]
    fn pieces_are_slices_of_the_payload_not_copies() {
        let data = payload(2 * PIECE);
        let crc = crc32fast::hash(&data);
        let calls = Arc::new(AtomicUsize::new(0));
        let mut pieces = CheckedPieces { payload: data.clone(), crc, hasher: crc32fast::Hasher::new(), checked: 0, at: 0, end: data.len(), damaged: Some(damaged_error(&calls)) };
        let first = pieces.next().unwrap().unwrap();
        assert_eq!(first.as_ptr(), data.as_ptr());
    }
}
