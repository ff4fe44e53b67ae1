//! Tests of segment files reused after eviction: a reused file's earlier records never come back (not
//! while running, not after a restart, not when its index file is lost), a file that a reader still
//! holds is never overwritten, a record forged inside a blob is not taken for one of the log's, and
//! segments written before files were reused stay readable.

use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;

use super::*;
use super::record::Header;
use crate::digest::DigestFunction;

const SEG: u64 = 64 * 1024;
const MAX: u64 = 4 * SEG;

fn config(dir: &Path) -> DiskConfig {
    DiskConfig { path: dir.to_path_buf(), max_size: MAX, segment_size: SEG, max_record: SEG / 4, sync: SyncPolicy::Always, compression: None }
}

fn blob(i: u32, len: usize) -> (Digest, Bytes) {
    let data: Vec<u8> = (0..len).map(|j| (i as usize * 11 + j * 5) as u8).collect();
    (DigestFunction::Sha256.digest_of(&data), Bytes::from(data))
}

/// Whether the open segment holds anything but zeros after its last record and the zeros the writer
/// keeps ahead of it: the leftovers of a reused file (a new file is zeros there).
fn open_segment_has_leftovers(log: &DiskLog) -> bool {
    let w = log.inner.writer.lock();
    w.open.bytes()[w.offset.max(w.zeroed_to) as usize..].iter().any(|&b| b != 0)
}

fn sealed_index_files(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "idx")).collect()
}

/// Which blobs the log holds intact, asked without the copy-forward that reads and `contains` do.
fn held(log: &DiskLog, digests: &[Digest]) -> Vec<bool> {
    let st = log.inner.state.read();
    digests.iter().map(|d| st.index.get(&d.key()).and_then(|loc| st.segments.get(&loc.segment)?.payload(loc, &d.key())).is_some()).collect()
}

#[tokio::test]
async fn a_reused_file_never_serves_its_earlier_records() {
    let dir = tempfile::tempdir().unwrap();
    let blobs: Vec<_> = (0..400).map(|i| blob(i, 2000 + (i as usize % 7) * 300)).collect();
    let digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    let before = {
        let log = DiskLog::open(config(dir.path())).unwrap();
        let mut reused_rolls = 0;
        let mut open = log.inner.writer.lock().open.id;
        for (d, data) in &blobs {
            log.write(d, data.clone()).await.unwrap();
            let now = log.inner.writer.lock().open.id;
            if now != open && open_segment_has_leftovers(&log) {
                reused_rolls += 1;
            }
            open = now;
        }
        assert!(open > 8, "the log must wrap twice, it rolled to segment {open}");
        assert!(reused_rolls >= 4, "a full log reuses evicted files: {reused_rolls} of its rolls did");
        let files = std::fs::read_dir(dir.path()).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "seg"));
        assert!(files.count() as u64 <= MAX / SEG);
        let held = held(&log, &digests);
        assert!(held.iter().any(|p| !p) && held.iter().any(|p| *p));
        assert!(held.iter().rev().take(20).all(|p| *p), "the newest blobs are held");
        held
    };
    // After a restart, the same blobs are held, and only they, though the open segment (a reused
    // file) holds records of its earlier life after its own; and without index files, when every
    // segment is scanned, too.
    let log = DiskLog::open(config(dir.path())).unwrap();
    assert_eq!(held(&log, &digests), before);
    drop(log);
    for idx in sealed_index_files(dir.path()) {
        std::fs::remove_file(idx).unwrap();
    }
    let log = DiskLog::open(config(dir.path())).unwrap();
    assert_eq!(held(&log, &digests), before);
    // What is served is the blob (reads copy hot blobs forward, which may evict others meanwhile).
    let mut served = 0;
    for (d, data) in &blobs {
        if let Some(blob) = log.read(d, 0, None).await.unwrap() {
            assert_eq!(blob.into_bytes().await.unwrap(), data);
            served += 1;
        }
    }
    assert!(served >= 20, "{served} served");
}

#[tokio::test]
async fn an_action_result_of_a_reused_file_does_not_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let action = DigestFunction::Sha256.digest_of(b"action");
    {
        let log = DiskLog::open(config(dir.path())).unwrap();
        log.put(&action, Bytes::from_static(b"an old result")).await.unwrap();
        for i in 0..200 {
            let (d, data) = blob(i, 3000);
            log.write(&d, data).await.unwrap();
        }
        assert_eq!(log.get(&action).await.unwrap(), None, "evicted");
        assert!(open_segment_has_leftovers(&log));
    }
    for idx in sealed_index_files(dir.path()) {
        std::fs::remove_file(idx).unwrap();
    }
    let log = DiskLog::open(config(dir.path())).unwrap();
    assert_eq!(log.get(&action).await.unwrap(), None);
}

#[tokio::test]
async fn a_segment_a_reader_still_holds_is_deleted_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let log = DiskLog::open(config(dir.path())).unwrap();
    let blobs: Vec<_> = (0..60).map(|i| blob(i, 3000)).collect();
    for (d, data) in &blobs {
        log.write(d, data.clone()).await.unwrap();
    }
    let first = blobs[0].clone();
    let held = log.read(&first.0, 0, None).await.unwrap().unwrap().into_bytes().await.unwrap();
    let segment_of = |d: &Digest| log.inner.state.read().index.get(&d.key()).unwrap().segment;
    let (held_in, other) = (segment_of(&first.0), segment_of(&blobs[30].0));
    assert_ne!(held_in, other);
    assert!(log.evict_segment(held_in, true).is_none(), "a slice of its mapping is still out");
    assert_eq!(held, first.1, "what a reader holds does not change");
    assert!(!segment::segment_path(dir.path(), held_in).exists());
    let spare = log.evict_segment(other, true).expect("nothing reads it: reusable");
    assert!(segment::segment_path(dir.path(), other).exists());
    assert!(!segment::index_path(dir.path(), other).exists(), "its records are gone");
    let reused = spare.reuse(dir.path(), 1000).unwrap();
    assert!(!segment::segment_path(dir.path(), other).exists());
    assert_eq!(reused.header_at(0), None, "its first record does not check out as segment 1000's");
}

#[tokio::test]
async fn segments_from_before_reuse_are_read_and_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let blobs: Vec<_> = (0..30).map(|i| blob(i, 3000)).collect();
    {
        let log = DiskLog::open(config(dir.path())).unwrap();
        for (d, data) in &blobs {
            log.write(d, data.clone()).await.unwrap();
        }
    }
    // Rewrite every header as the version before reuse wrote them: the first magic, no segment id.
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let Some(id) = path.file_name().unwrap().to_str().unwrap().strip_suffix(".seg").map(|s| s.parse::<u32>().unwrap()) else { continue };
        ids.push(id);
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let seg = Segment::open(dir.path(), id, segment::log_salt(dir.path(), true).unwrap()).unwrap();
        for e in recovery::scan(&seg).0 {
            let header = seg.header_at(e.offset).unwrap();
            file.write_all_at(&header.encode(), u64::from(e.offset)).unwrap();
        }
    }
    assert!(ids.len() >= 2);
    let log = DiskLog::open(config(dir.path())).unwrap();
    for (d, data) in &blobs {
        assert_eq!(log.read(d, 0, None).await.unwrap().unwrap().into_bytes().await.unwrap(), data);
    }
    let oldest = *ids.iter().min().unwrap();
    let segment = log.inner.state.read().segments[&oldest].clone();
    assert!(segment.header_at(0).is_some());
    assert!(!segment.reusable(SEG), "its records have no segment id to tell them from later ones");
}

/// A client chooses the bytes of its blobs, so a reused file may hold, right where the records of its
/// new life end, bytes laid out as a record: an action result of the client's making. A restart's
/// scan reads on from the last record without a hash check (action results do not hash to their
/// keys), so what stops it is the header checksum, seeded with a salt the client does not know.
#[tokio::test]
async fn a_record_forged_in_a_blob_is_not_read_after_a_restart() {
    let action = DigestFunction::Sha256.digest_of(b"an action the client wants cached");
    let forged = Header::new(action.key(), Form::Identity, &Bytes::from_static(b"forged result").into());
    let seeded = move |salt, segment| forged.encode_in_segment(record::Seed { salt, segment, legacy: false });
    // What a client can make (it may well guess the segment's id): the first magic, or the segment
    // magic with a guessed salt; and, to show that the scan does reach these bytes, the log's own.
    type Make = Box<dyn Fn(&Segment) -> [u8; record::HEADER_LEN]>;
    let cases: [(&str, Make, bool); 4] = [
        ("the first magic", Box::new(move |_| forged.encode()), false),
        ("no salt", Box::new(move |s| seeded(0, s.id)), false),
        ("a guessed salt", Box::new(move |s| seeded(0x1234_5678, s.id)), false),
        ("the log's own salt", Box::new(move |s| forged.encode_in_segment(s.seed)), true),
    ];
    for (what, make, read) in cases {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = DiskLog::open(config(dir.path())).unwrap();
            for j in 0..200 {
                let (d, data) = blob(j, 3000);
                log.write(&d, data).await.unwrap();
            }
            assert!(open_segment_has_leftovers(&log));
            let w = log.inner.writer.lock();
            w.open.write_at(w.offset, &[&make(&w.open)[..], b"forged result"].concat()).unwrap();
        }
        let log = DiskLog::open(config(dir.path())).unwrap();
        let found = log.get(&action).await.unwrap();
        assert_eq!(found.is_some(), read, "{what}");
    }
}
