//! Parallel decompression of multistream `.bz2` dumps.
//!
//! Wikipedia's `pages-articles-multistream.xml.bz2` is many bzip2 streams back to back (a
//! hundred pages each), so streams can be decompressed on several threads and put back in
//! order. A stream starts at a byte boundary with `BZh1`–`BZh9` and the block magic; the
//! file is cut into segments of whole streams there. The same ten bytes could occur inside
//! compressed data, so a cut is only trusted once the data before it decoded to an exact
//! stream end: a segment whose worker did not decode it whole (a false cut, a stream too
//! long to buffer, a corrupt block) goes through one sequential decoder instead, which
//! reports a real error as a sequential read would. The bzip2 crate decodes one stream at a
//! time; this splitting and ordering is what no crate does.
//!
//! Memory is bounded: at most [`AHEAD`] segments per thread are read ahead of the parser,
//! a segment is cut at 8 MiB even mid-stream, and a worker decodes at most 32 MiB of it
//! (see [`Limits`]). A file that is one stream is not split at all (see `dump::open`).

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bzip2::{Decompress, Status};

use super::dump::Timing;

/// Segments read ahead of the parser, per thread.
const AHEAD: usize = 2;
/// Bytes read from the file at a time.
const READ: usize = 1 << 20;
/// Bytes of output per piece of the sequential decoder.
const CHUNK: usize = 1 << 20;

/// Sizes that bound the work and memory of a segment.
#[derive(Clone, Copy)]
struct Limits {
    /// Streams are grouped into segments of at least this many compressed bytes (a
    /// stream of a hundred pages is some hundreds of KB).
    min_segment: usize,
    /// A segment is cut here even inside a stream (it is then decoded sequentially).
    max_segment: usize,
    /// Most bytes a worker decodes a segment to (more goes through the sequential
    /// decoder, in chunks): bounds the memory of data that expands a lot.
    max_decoded: usize,
}

impl Limits {
    const DEFAULT: Limits = Limits { min_segment: 1 << 20, max_segment: 8 << 20, max_decoded: 32 << 20 };
}

/// A segment of the file, in file order.
struct Segment {
    seq: u64,
    bytes: Vec<u8>,
    /// Starts at a (candidate) stream start and ends at one or at the end of the file.
    whole: bool,
}

/// A worker's result for a segment: its decoded bytes when the segment decoded to an exact
/// stream end, else `None` (decoded sequentially instead).
struct Decoded {
    seq: u64,
    bytes: Vec<u8>,
    out: Option<Vec<u8>>,
}

/// Whether `b[i..]` starts a bzip2 stream holding at least one block.
fn stream_start(b: &[u8], i: usize) -> bool {
    b.len() >= i + 10
        && &b[i..i + 3] == b"BZh"
        && (b'1'..=b'9').contains(&b[i + 3])
        && b[i + 4..i + 10] == [0x31, 0x41, 0x59, 0x26, 0x53, 0x59]
}

/// Whether a second bzip2 stream starts in `head`, the first bytes of a file.
pub(super) fn starts_another_stream(head: &[u8]) -> bool {
    (1..head.len()).any(|i| stream_start(head, i))
}

/// bzip2 streams back to back, decoded from input given in pieces.
#[derive(Default)]
struct StreamDecoder {
    /// The stream being decoded; `None` between streams.
    current: Option<Decompress>,
}

impl StreamDecoder {
    /// Decodes from `input`, appending to `out` until it holds `limit` bytes (a bound for
    /// data that expands a lot); returns the input bytes consumed. The decoder keeps what it
    /// has read but not yet written: call again, with the rest of the input or none.
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>, limit: usize) -> io::Result<usize> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            if (rest.is_empty() && self.current.is_none()) || out.len() >= limit {
                return Ok(used);
            }
            let d = self.current.get_or_insert_with(|| Decompress::new(false));
            let (start, in_before, out_before) = (out.len(), d.total_in(), d.total_out());
            out.resize(start + (limit - start).min(1 << 20), 0);
            let status = d.decompress(rest, &mut out[start..]);
            let produced = (d.total_out() - out_before) as usize;
            out.truncate(start + produced);
            let status = status.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let consumed = (d.total_in() - in_before) as usize;
            used += consumed;
            if status == Status::StreamEnd {
                self.current = None;
            } else if consumed == 0 && produced == 0 {
                if !rest.is_empty() {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "the bzip2 decoder is stuck"));
                }
                // All input is consumed; the stream goes on in the next piece.
                return Ok(used);
            }
        }
    }

    /// Between two streams (everything fed so far ended exactly at a stream end).
    fn idle(&self) -> bool {
        self.current.is_none()
    }
}

/// Decompresses the multistream bzip2 file `src` on `threads` threads, sending its bytes in
/// order to `tx` as [`super::dump`]'s reader expects: chunks, then an empty chunk at the
/// end, or an error.
pub(super) fn decompress(
    src: Box<dyn Read + Send>,
    threads: usize,
    tx: SyncSender<io::Result<Vec<u8>>>,
    timing: Arc<Timing>,
) {
    decompress_with(src, threads, tx, timing, Limits::DEFAULT)
}

fn decompress_with(
    src: Box<dyn Read + Send>,
    threads: usize,
    tx: SyncSender<io::Result<Vec<u8>>>,
    timing: Arc<Timing>,
    limits: Limits,
) {
    let (work_tx, work_rx) = sync_channel::<Segment>(threads);
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (done_tx, done_rx) = channel::<Decoded>();
    // A ticket per segment in flight: the splitter waits for one before reading on.
    let (ticket_tx, ticket_rx) = sync_channel::<()>(AHEAD * threads + 1);
    for _ in 0..AHEAD * threads {
        let _ = ticket_tx.send(());
    }
    let (split_err_tx, split_err_rx) = channel::<io::Error>();
    let t = timing.clone();
    let splitter = std::thread::Builder::new()
        .name("dump-split".into())
        .spawn(move || split(src, work_tx, ticket_rx, split_err_tx, t, limits));
    if let Err(e) = splitter {
        let _ = tx.send(Err(e));
        return;
    }
    for i in 0..threads {
        let (rx, done, timing) = (work_rx.clone(), done_tx.clone(), timing.clone());
        let spawned = std::thread::Builder::new().name(format!("dump-bz2-{i}")).spawn(move || {
            loop {
                let next = match rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok(seg) = next else { return };
                let t = Instant::now();
                // A panic here would leave the ordering waiting for this segment: it is
                // decoded sequentially instead (where a real fault shows as an error).
                let decode = || seg.whole.then(|| decode_whole(&seg.bytes, limits.max_decoded)).flatten();
                let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or(None);
                timing.decompress_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                if done.send(Decoded { seq: seg.seq, bytes: seg.bytes, out }).is_err() {
                    return;
                }
            }
        });
        if let Err(e) = spawned {
            let _ = tx.send(Err(e));
            return;
        }
    }
    drop(done_tx);
    let result = put_in_order(done_rx, &tx, &ticket_tx, &timing);
    // A read error of the file, if the splitter stopped on one, is the cause of whatever
    // went wrong after the bytes read before it.
    let result = match split_err_rx.try_recv() {
        Ok(e) => Err(e),
        Err(_) => result,
    };
    let _ = tx.send(match result {
        Ok(()) => Ok(Vec::new()),
        Err(e) => Err(e),
    });
}

/// The decoded segment, if it is whole streams ending exactly at its end and decodes to at
/// most `max` bytes.
fn decode_whole(bytes: &[u8], max: usize) -> Option<Vec<u8>> {
    let mut d = StreamDecoder::default();
    let mut out = Vec::with_capacity((bytes.len() * 6).min(max));
    let used = d.feed(bytes, &mut out, max).ok()?;
    (used == bytes.len() && d.idle()).then_some(out)
}

/// Sends the segments' bytes in file order; a segment no worker decoded whole goes through
/// the sequential decoder, as does any segment after one (until it is between streams).
fn put_in_order(
    done_rx: Receiver<Decoded>,
    tx: &SyncSender<io::Result<Vec<u8>>>,
    tickets: &SyncSender<()>,
    timing: &Timing,
) -> io::Result<()> {
    // False when the reader is gone (a crawl that has enough pages).
    let send = |out: Vec<u8>| {
        timing.xml_bytes.fetch_add(out.len() as u64, Ordering::Relaxed);
        out.is_empty() || tx.send(Ok(out)).is_ok()
    };
    let mut waiting: BTreeMap<u64, Decoded> = BTreeMap::new();
    let mut next = 0u64;
    let mut sequential = StreamDecoder::default();
    for d in done_rx {
        waiting.insert(d.seq, d);
        while let Some(d) = waiting.remove(&next) {
            next += 1;
            match d.out {
                // Trusted only if everything before ended at a stream end: then its first
                // byte really starts a stream.
                Some(out) if sequential.idle() => {
                    if !send(out) {
                        return Ok(());
                    }
                }
                // In pieces of at most a chunk each, as a sequential read gives them.
                _ => {
                    let mut at = 0;
                    loop {
                        let t = Instant::now();
                        let mut out = Vec::new();
                        let fed = sequential.feed(&d.bytes[at..], &mut out, CHUNK);
                        timing.decompress_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        at += fed?;
                        if out.is_empty() {
                            break;
                        }
                        if !send(out) {
                            return Ok(());
                        }
                    }
                }
            }
            let _ = tickets.send(());
        }
    }
    if !waiting.is_empty() {
        return Err(io::Error::other("a decompression thread stopped before the end of the dump"));
    }
    if !sequential.idle() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the bzip2 dump ends inside a stream"));
    }
    Ok(())
}

/// Reads the file and cuts it into segments at stream starts.
fn split(
    mut src: Box<dyn Read + Send>,
    work: SyncSender<Segment>,
    tickets: Receiver<()>,
    errors: std::sync::mpsc::Sender<io::Error>,
    timing: Arc<Timing>,
    limits: Limits,
) {
    let mut seq = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(limits.min_segment + READ);
    // Whether `buf` starts at a stream start (not after a cut made mid-stream).
    let mut at_start = true;
    let mut send = |bytes: Vec<u8>, whole: bool| -> bool {
        if tickets.recv().is_err() {
            return false;
        }
        let ok = work.send(Segment { seq, bytes, whole }).is_ok();
        seq += 1;
        ok
    };
    let mut chunk = vec![0u8; READ];
    loop {
        let t = Instant::now();
        let n = match src.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = errors.send(e);
                0
            }
        };
        timing.decompress_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if n == 0 {
            if !buf.is_empty() {
                send(std::mem::take(&mut buf), at_start);
            }
            return;
        }
        let scan_from = buf.len().saturating_sub(9).max(limits.min_segment);
        buf.extend_from_slice(&chunk[..n]);
        // The first stream start past the minimum size ends the segment.
        if let Some(cut) = (scan_from..buf.len()).find(|&i| stream_start(&buf, i)) {
            let rest = buf.split_off(cut);
            if !send(std::mem::replace(&mut buf, rest), at_start) {
                return;
            }
            at_start = true;
        } else if buf.len() >= limits.max_segment {
            // One stream longer than a segment (a dump that is not multistream): cut
            // anyway, and keep the last bytes, which may hold the start of a stream.
            let rest = buf.split_off(buf.len() - 9);
            if !send(std::mem::replace(&mut buf, rest), false) {
                return;
            }
            at_start = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn bz2(data: &[u8]) -> Vec<u8> {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Text that compresses to some KB per stream.
    fn text(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                b"abcdefghij <>\n"[(x >> 60) as usize % 14]
            })
            .collect()
    }

    /// Small limits, so that small files take every path.
    const SMALL: Limits = Limits { min_segment: 64 << 10, max_segment: 1 << 20, max_decoded: 2 << 20 };

    /// Runs [`decompress_with`] over `file` and returns what the reader gets.
    fn run_with(file: Vec<u8>, threads: usize, limits: Limits) -> io::Result<Vec<u8>> {
        let (tx, rx) = sync_channel(4);
        let timing = Arc::new(Timing::default());
        let src = Box::new(io::Cursor::new(file));
        let handle = std::thread::spawn(move || decompress_with(src, threads, tx, timing, limits));
        let mut all = Vec::new();
        for chunk in rx {
            let chunk = chunk?;
            if chunk.is_empty() {
                break;
            }
            all.extend(chunk);
        }
        handle.join().unwrap();
        Ok(all)
    }

    fn run(file: Vec<u8>, threads: usize) -> io::Result<Vec<u8>> {
        run_with(file, threads, SMALL)
    }

    #[test]
    fn many_streams_decode_in_order_on_several_threads() {
        // Streams of varied sizes, several per segment and some larger than one.
        let parts: Vec<Vec<u8>> = (0..40).map(|i| text(20_000 + (i % 7) * 40_000, i as u64)).collect();
        let file: Vec<u8> = parts.iter().flat_map(|p| bz2(p)).collect();
        let want: Vec<u8> = parts.concat();
        for threads in [2, 3, 4] {
            assert_eq!(run(file.clone(), threads).unwrap(), want, "{threads} threads");
        }
        // And with the real sizes: one segment.
        assert_eq!(run_with(file, 2, Limits::DEFAULT).unwrap(), want);
    }

    #[test]
    fn one_long_stream_is_cut_and_decoded_sequentially() {
        // Larger than a segment: cut mid-stream, every piece through the sequential decoder.
        let data = text(3 * SMALL.max_segment, 7);
        let file = bz2(&data);
        assert!(file.len() > SMALL.max_segment, "the test needs a stream longer than a segment");
        assert_eq!(run(file, 2).unwrap(), data);
        // Streams that expand past what a worker may hold: decoded sequentially, in chunks.
        let zeros = vec![b'0'; 8 * SMALL.max_decoded];
        let file: Vec<u8> = [bz2(&zeros), bz2(b"end")].concat();
        assert!(decode_whole(&bz2(&zeros), SMALL.max_decoded).is_none());
        assert_eq!(run(file, 2).unwrap(), [zeros, b"end".to_vec()].concat());
    }

    #[test]
    fn a_false_stream_start_is_not_trusted() {
        // A stream whose compressed bytes are cut where the test pretends a stream starts:
        // the worker cannot decode either half whole, and the sequential decoder reads on.
        let a = text(3 * SMALL.min_segment, 1);
        let b = text(50_000, 2);
        let (za, zb) = (bz2(&a), bz2(&b));
        let mut d = StreamDecoder::default();
        let mut out = Vec::new();
        let unbounded = usize::MAX;
        assert_eq!(d.feed(&za[..za.len() / 2], &mut out, unbounded).unwrap(), za.len() / 2);
        assert!(!d.idle());
        d.feed(&za[za.len() / 2..], &mut out, unbounded).unwrap();
        assert!(d.idle());
        d.feed(&zb, &mut out, unbounded).unwrap();
        assert_eq!(out, [a.clone(), b.clone()].concat());
        assert_eq!(decode_whole(&za[..za.len() / 2], usize::MAX), None);
        assert_eq!(decode_whole(&za[za.len() / 2..], usize::MAX), None);
        // Through the ordering, as the workers would return it.
        let (done_tx, done_rx) = channel();
        let half = za.len() / 2;
        let segs =
            [(za[..half].to_vec(), None), (za[half..].to_vec(), None), (zb.clone(), decode_whole(&zb, usize::MAX))];
        for (seq, (bytes, out)) in segs.into_iter().enumerate().rev() {
            done_tx.send(Decoded { seq: seq as u64, bytes, out }).unwrap();
        }
        drop(done_tx);
        let (tx, rx) = sync_channel(8);
        let (tickets, _keep) = sync_channel(8);
        put_in_order(done_rx, &tx, &tickets, &Timing::default()).unwrap();
        drop(tx);
        let got: Vec<u8> = rx.into_iter().flat_map(|c| c.unwrap()).collect();
        assert_eq!(got, [a, b].concat());
    }

    #[test]
    fn multistream_files_are_told_from_one_stream() {
        let one = bz2(&text(3_000_000, 3));
        assert!(!starts_another_stream(&one[..one.len().min(1 << 20)]));
        let many = [bz2(b"<mediawiki><siteinfo/>"), bz2(&text(3_000_000, 3))].concat();
        assert!(starts_another_stream(&many[..1 << 20]));
    }

    #[test]
    fn a_reader_that_stops_early_stops_every_thread() {
        // A crawl with `max_pages` stops reading: nothing may wait forever.
        let parts: Vec<Vec<u8>> = (0..60).map(|i| text(100_000, i)).collect();
        let file: Vec<u8> = parts.iter().flat_map(|p| bz2(p)).collect();
        let (tx, rx) = sync_channel(1);
        let (done_tx, done_rx) = channel();
        std::thread::spawn(move || {
            decompress_with(Box::new(io::Cursor::new(file)), 3, tx, Arc::new(Timing::default()), SMALL);
            let _ = done_tx.send(());
        });
        assert!(!rx.recv().unwrap().unwrap().is_empty());
        drop(rx);
        done_rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the decompression did not stop");
    }

    #[test]
    fn corrupt_and_truncated_files_are_errors() {
        let parts: Vec<Vec<u8>> = (0..6).map(|i| text(200_000, i)).collect();
        let file: Vec<u8> = parts.iter().flat_map(|p| bz2(p)).collect();
        let mut corrupt = file.clone();
        let at = corrupt.len() / 2;
        corrupt[at] ^= 0x55;
        assert!(run(corrupt, 2).is_err());
        let truncated = file[..file.len() - 100].to_vec();
        assert!(run(truncated, 2).is_err());
        assert!(run(b"not bzip2 at all".to_vec(), 2).is_err());
    }
}
