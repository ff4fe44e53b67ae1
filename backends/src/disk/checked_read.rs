//! A segment record's payload served a piece at a time, its checksum computed as the pieces go out.
//! Checked whole before its first byte is sent, a 16 MiB record held a runtime thread for over a
//! millisecond and was read from memory twice, the send finding none of it in the cache. Checked
//! piece by piece, the first byte leaves after one piece is checked and each piece is sent soon after
//! the checksum has read it. The last piece is held until the whole payload checks out, so a damaged
//! record never completes a read: it ends with an error instead (and its entry is dropped, as a
//! damaged record found before a read is), as reads through `layers::verify` do.

use std::ops::Range;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::error::{Result, StoreError};

/// Pieces of this size: the ByteStream service's messages, which it then sends as they are.
pub const PIECE: usize = 1 << 20;

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
