//! A blob as the pieces it arrived in. An upload reaches the storage as slices of the receive
//! buffers; a tier that writes them out (the disk log, with one `pwritev`) need not join them first.

use std::fs::File;
use std::io::IoSlice;

use bytes::Bytes;

/// Most slices one `pwritev` takes (Linux's IOV_MAX).
const IOV_MAX: usize = 1024;

/// The pieces of one blob, in order. The first is held inline: most blobs arrive in one piece, and
/// those then cost no allocation for the list.
#[derive(Clone, Debug, Default)]
pub struct Chunks {
    first: Bytes,
    rest: Vec<Bytes>,
    len: usize,
}

impl Chunks {
    /// Adds a piece at the end (empty pieces are dropped).
    pub fn push(&mut self, piece: Bytes) {
        if piece.is_empty() {
            return;
        }
        self.len += piece.len();
        if self.first.is_empty() {
            self.first = piece;
        } else {
            self.rest.push(piece);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces, in order; none is empty.
    pub fn pieces(&self) -> impl Iterator<Item = &Bytes> {
        std::iter::once(&self.first).filter(|p| !p.is_empty()).chain(&self.rest)
    }

    /// The blob in one buffer: the piece itself if there is one, else the pieces copied together.
    pub fn into_bytes(self) -> Bytes {
        if self.rest.is_empty() {
            return self.first;
        }
        let mut joined = Vec::with_capacity(self.len);
        for piece in self.pieces() {
            joined.extend_from_slice(piece);
        }
        Bytes::from(joined)
    }

    /// Writes the pieces one after another from `offset`, as many per system call as the kernel
    /// takes (`pwritev`). Blocking.
    pub fn write_all_at(&self, file: &File, mut offset: u64) -> std::io::Result<()> {
        let mut slices: Vec<IoSlice> = self.pieces().map(|piece| IoSlice::new(piece)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let batch = rest.len().min(IOV_MAX);
            match rustix::io::pwritev(file, &rest[..batch], offset) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    offset += n as u64;
                    IoSlice::advance_slices(&mut rest, n);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The CRC-32 of the whole blob.
    pub fn crc32(&self) -> u32 {
        let mut crc = crc32fast::Hasher::new();
        self.pieces().for_each(|p| crc.update(p));
        crc.finalize()
    }
}

impl From<Bytes> for Chunks {
    fn from(piece: Bytes) -> Chunks {
        let mut chunks = Chunks::default();
        chunks.push(piece);
        chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_keep_their_order_and_join_only_when_there_are_several() {
        let mut chunks = Chunks::default();
        assert!(chunks.is_empty() && chunks.pieces().next().is_none());
        assert!(chunks.clone().into_bytes().is_empty());
        let one = Bytes::from(vec![7u8; 100]);
        chunks.push(Bytes::new());
        chunks.push(one.clone());
        assert_eq!(chunks.pieces().count(), 1);
        assert_eq!(chunks.clone().into_bytes().as_ptr(), one.as_ptr(), "one piece is handed on, not copied");
        for piece in [&b"ab"[..], b"", b"cde"] {
            chunks.push(Bytes::copy_from_slice(piece));
        }
        assert_eq!(chunks.len(), 105);
        assert_eq!(chunks.pieces().map(|p| p.len()).collect::<Vec<_>>(), [100, 2, 3]);
        assert_eq!(chunks.crc32(), crc32fast::hash(&chunks.clone().into_bytes()));
        let mut whole = vec![7u8; 100];
        whole.extend_from_slice(b"abcde");
        assert_eq!(chunks.into_bytes(), whole);
    }

    #[test]
    fn more_pieces_than_one_system_call_takes_are_written_in_order() {
        let mut chunks = Chunks::default();
        let mut whole = Vec::new();
        for i in 0..(2 * IOV_MAX + 321) {
            let piece: Vec<u8> = (0..(i % 37 + 1)).map(|j| (i * 7 + j) as u8).collect();
            whole.extend_from_slice(&piece);
            chunks.push(Bytes::from(piece));
        }
        let file = tempfile::tempfile().unwrap();
        chunks.write_all_at(&file, 5).unwrap();
        let mut back = vec![0u8; whole.len() + 5];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut back, 0).unwrap();
        assert_eq!(&back[..5], &[0; 5], "nothing before the offset");
        assert_eq!(&back[5..], &whole[..]);
    }
}
