//! Streaming reader of MediaWiki XML exports and dumps (`pages-articles.xml`, plain or
//! `.bz2`, multistream included), with memory bounded by the largest page.
//!
//! Decompression runs on its own thread and hands 1 MiB chunks to the XML parser through a
//! bounded channel, so the two overlap on two cores and the time of each is measured
//! separately ([`Timing`]).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Instant;

use quick_xml::events::Event;

/// One page of a dump (its last revision).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DumpPage {
    /// Title as written in the dump.
    pub title: String,
    /// Namespace number.
    pub ns: i64,
    /// Page id.
    pub page_id: i64,
    /// `<redirect title="…"/>`: the target.
    pub redirect: Option<String>,
    /// Revision id.
    pub revision_id: Option<i64>,
    /// Revision timestamp (ISO 8601).
    pub timestamp: Option<String>,
    /// The revision's text.
    pub text: String,
    /// Content model (`wikitext`, `css`, …).
    pub model: Option<String>,
}

/// The `<siteinfo>` header.
#[derive(Clone, Debug, Default)]
pub struct SiteInfo {
    /// `<base>`: URL of the main page (used to build page URLs).
    pub base: Option<String>,
    /// `<dbname>`.
    pub dbname: Option<String>,
}

impl SiteInfo {
    /// URL of a page: the base's directory plus the title with `_` for spaces.
    pub fn page_url(&self, title: &str) -> String {
        let base = self.base.as_deref().unwrap_or("https://en.wikipedia.org/wiki/Main_Page");
        let dir = match base.rfind('/') {
            Some(i) => &base[..=i],
            None => base,
        };
        format!("{dir}{}", url_title(title))
    }
}

/// A title as it appears in a wiki URL: spaces as `_`, reserved characters escaped.
pub fn url_title(title: &str) -> String {
    let mut out = String::with_capacity(title.len());
    for c in title.chars() {
        match c {
            ' ' => out.push('_'),
            '?' | '&' | '#' | '%' | '"' | '+' | '=' => {
                let mut b = [0u8; 4];
                for byte in c.encode_utf8(&mut b).bytes() {
                    out.push_str(&format!("%{byte:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// A page that could not be read.
#[derive(Clone, Debug)]
pub struct BadPage {
    /// Its title, if read.
    pub title: String,
    /// Why.
    pub reason: String,
}

/// Time spent decompressing and reading (nanoseconds), shared with the reader thread.
#[derive(Debug, Default)]
pub struct Timing {
    /// Nanoseconds inside the decompressor (or the file reads, for plain XML), summed over
    /// the threads that decompress a multistream dump.
    pub decompress_ns: AtomicU64,
    /// Compressed bytes read from the file.
    pub file_bytes: AtomicU64,
    /// Bytes handed to the parser.
    pub xml_bytes: AtomicU64,
}

impl Timing {
    /// Seconds spent decompressing.
    pub fn decompress_secs(&self) -> f64 {
        self.decompress_ns.load(Ordering::Relaxed) as f64 / 1e9
    }
}

const CHUNK: usize = 1 << 20;

/// Reads chunks from the decompression thread: data, then an empty chunk at the end of the
/// file, or an error. A thread that stops without either (it panicked) is an error too, not
/// the end of the dump.
struct ChannelReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    off: usize,
    done: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.off >= self.cur.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) if chunk.is_empty() => self.done = true,
                Ok(Ok(chunk)) => {
                    self.cur = chunk;
                    self.off = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Err(io::Error::other("the decompression thread stopped before the end of the dump"));
                }
            }
        }
        let n = buf.len().min(self.cur.len() - self.off);
        buf[..n].copy_from_slice(&self.cur[self.off..self.off + n]);
        self.off += n;
        Ok(n)
    }
}

struct CountingReader<R> {
    inner: R,
    timing: Arc<Timing>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.timing.file_bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn pump(mut src: Box<dyn Read + Send>, tx: SyncSender<io::Result<Vec<u8>>>, timing: Arc<Timing>) {
    loop {
        let mut chunk = vec![0u8; CHUNK];
        let mut filled = 0;
        let t = Instant::now();
        let res = loop {
            match src.read(&mut chunk[filled..]) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    filled += n;
                    if filled == chunk.len() {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        timing.decompress_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        timing.xml_bytes.fetch_add(filled as u64, Ordering::Relaxed);
        chunk.truncate(filled);
        if let Err(e) = res {
            let _ = tx.send(Err(e));
            return;
        }
        if filled == 0 {
            // The end of the file (an empty chunk says so).
            let _ = tx.send(Ok(Vec::new()));
            return;
        }
        if tx.send(Ok(chunk)).is_err() {
            return;
        }
    }
}

/// Opens a dump: `.bz2` (single or multistream), `.gz` or plain XML, decompressed on a
/// thread beside the parser; a multistream `.bz2` on `threads` threads when that is more
/// than one.
pub fn open(path: &Path, threads: usize) -> io::Result<(Box<dyn BufRead + Send>, Arc<Timing>)> {
    let file = File::open(path)?;
    let timing = Arc::new(Timing::default());
    let mut counted: Box<dyn Read + Send> =
        Box::new(CountingReader { inner: BufReader::with_capacity(CHUNK, file), timing: timing.clone() });
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let (tx, rx) = sync_channel(4);
    let reader = ChannelReader { rx, cur: Vec::new(), off: 0, done: false };
    let t2 = timing.clone();
    if name.ends_with(".bz2") && threads > 1 {
        // Multistream when a second stream starts in the first MiB (Wikipedia's first
        // stream is the header alone). One stream cannot be split: it is read as below.
        let mut head = Vec::new();
        (&mut counted).take(CHUNK as u64).read_to_end(&mut head)?;
        let multistream = super::multistream::starts_another_stream(&head);
        counted = Box::new(io::Cursor::new(head).chain(counted));
        if multistream {
            std::thread::Builder::new()
                .name("dump-decompress".into())
                .spawn(move || super::multistream::decompress(counted, threads, tx, t2))?;
            return Ok((Box::new(BufReader::with_capacity(CHUNK, reader)), timing));
        }
    }
    let src: Box<dyn Read + Send> = if name.ends_with(".bz2") {
        Box::new(bzip2::read::MultiBzDecoder::new(counted))
    } else if name.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(counted))
    } else {
        counted
    };
    std::thread::Builder::new().name("dump-decompress".into()).spawn(move || pump(src, tx, t2))?;
    Ok((Box::new(BufReader::with_capacity(CHUNK, reader)), timing))
}

/// Which element's text is being collected.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    None,
    Title,
    Ns,
    PageId,
    RevId,
    Timestamp,
    Text,
    Model,
    Base,
    DbName,
}

/// Iterates over the pages of a dump. Items are a page, or a page that could not be read
/// (missing title, bad numbers); an `Err` is a broken file and ends the iteration.
pub struct DumpReader<R: BufRead> {
    xml: quick_xml::Reader<R>,
    buf: Vec<u8>,
    /// The `<siteinfo>` read so far (complete once the first page is returned).
    pub site: SiteInfo,
    path: Vec<Vec<u8>>,
    field: Field,
    value: String,
    page: DumpPage,
    page_id_raw: String,
    bad: Option<String>,
    in_revision: bool,
    revision_seen: bool,
    finished: bool,
}

impl<R: BufRead> DumpReader<R> {
    /// A reader over XML.
    pub fn new(reader: R) -> Self {
        let mut xml = quick_xml::Reader::from_reader(reader);
        xml.config_mut().trim_text(false);
        DumpReader {
            xml,
            buf: Vec::with_capacity(1 << 16),
            site: SiteInfo::default(),
            path: Vec::new(),
            field: Field::None,
            value: String::new(),
            page: DumpPage::default(),
            page_id_raw: String::new(),
            bad: None,
            in_revision: false,
            revision_seen: false,
            finished: false,
        }
    }

    /// Byte position in the (decompressed) XML.
    pub fn position(&self) -> u64 {
        self.xml.buffer_position()
    }

    fn start_field(&mut self, name: &[u8]) {
        let parent = self.path.last().map(|p| p.as_slice());
        self.field = match (parent, name) {
            (Some(b"page"), b"title") => Field::Title,
            (Some(b"page"), b"ns") => Field::Ns,
            (Some(b"page"), b"id") => Field::PageId,
            (Some(b"revision"), b"id") => Field::RevId,
            (Some(b"revision"), b"timestamp") => Field::Timestamp,
            (Some(b"revision"), b"text") => Field::Text,
            (Some(b"revision"), b"model") => Field::Model,
            (Some(b"siteinfo"), b"base") => Field::Base,
            (Some(b"siteinfo"), b"dbname") => Field::DbName,
            _ => Field::None,
        };
        self.value.clear();
    }

    fn end_field(&mut self) {
        let v = std::mem::take(&mut self.value);
        match self.field {
            Field::Title => self.page.title = v,
            Field::Ns => match v.trim().parse() {
                Ok(n) => self.page.ns = n,
                Err(_) => self.bad = Some(format!("namespace `{}` is not a number", v.trim())),
            },
            Field::PageId => self.page_id_raw = v,
            Field::RevId => {
                self.page.revision_id = v.trim().parse().ok();
            }
            Field::Timestamp => self.page.timestamp = Some(v.trim().to_string()),
            Field::Text => self.page.text = v,
            Field::Model => self.page.model = Some(v.trim().to_string()),
            Field::Base => self.site.base = Some(v.trim().to_string()),
            Field::DbName => self.site.dbname = Some(v.trim().to_string()),
            Field::None => self.value = v,
        }
        self.field = Field::None;
    }

    fn finish_page(&mut self) -> Result<DumpPage, BadPage> {
        let mut page = std::mem::take(&mut self.page);
        let bad = self.bad.take();
        let raw_id = std::mem::take(&mut self.page_id_raw);
        if let Some(reason) = bad {
            return Err(BadPage { title: page.title, reason });
        }
        if page.title.trim().is_empty() {
            return Err(BadPage { title: String::new(), reason: "page without a title".into() });
        }
        match raw_id.trim().parse() {
            Ok(id) => page.page_id = id,
            Err(_) => {
                return Err(BadPage {
                    title: page.title,
                    reason: format!("page id `{}` is not a number", raw_id.trim()),
                });
            }
        }
        if !self.revision_seen {
            return Err(BadPage { title: page.title, reason: "page without a revision".into() });
        }
        Ok(page)
    }
}

impl<R: BufRead> Iterator for DumpReader<R> {
    type Item = Result<Result<DumpPage, BadPage>, quick_xml::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        loop {
            self.buf.clear();
            let ev = match self.xml.read_event_into(&mut self.buf) {
                Ok(e) => e,
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
            };
            match ev {
                Event::Start(e) => {
                    let name = e.local_name().as_ref().to_vec();
                    if name == b"page" {
                        self.page = DumpPage::default();
                        self.bad = None;
                        self.revision_seen = false;
                    }
                    if name == b"revision" {
                        // Full-history dumps: the last revision wins.
                        self.in_revision = true;
                        self.revision_seen = true;
                        self.page.text.clear();
                        self.page.revision_id = None;
                        self.page.timestamp = None;
                    }
                    self.start_field(&name);
                    self.path.push(name);
                }
                Event::Empty(e) => {
                    let name = e.local_name();
                    if name.as_ref() == b"redirect" && self.path.last().is_some_and(|p| p == b"page") {
                        if let Ok(Some(a)) = e.try_get_attribute("title")
                            && let Ok(v) = a.unescape_value()
                        {
                            self.page.redirect = Some(v.into_owned());
                        }
                    } else if name.as_ref() == b"text" {
                        // `<text deleted="deleted" />`: no content.
                        self.page.text.clear();
                    } else if name.as_ref() == b"revision" {
                        self.revision_seen = true;
                    }
                }
                Event::Text(t) if self.field != Field::None => match t.decode() {
                    Ok(s) => self.value.push_str(&s),
                    Err(e) => self.bad = Some(format!("text is not valid UTF-8: {e}")),
                },
                Event::CData(t) if self.field != Field::None => self.value.push_str(&String::from_utf8_lossy(&t)),
                Event::GeneralRef(r) if self.field != Field::None => match r.resolve_char_ref() {
                    Ok(Some(c)) => self.value.push(c),
                    _ => {
                        let name = r.decode().map(|c| c.into_owned()).unwrap_or_default();
                        match quick_xml::escape::resolve_predefined_entity(&name) {
                            Some(s) => self.value.push_str(s),
                            None => {
                                self.value.push('&');
                                self.value.push_str(&name);
                                self.value.push(';');
                            }
                        }
                    }
                },
                Event::End(e) => {
                    let name = e.local_name().as_ref().to_vec();
                    if self.field != Field::None {
                        self.end_field();
                    }
                    self.path.pop();
                    if name == b"revision" {
                        self.in_revision = false;
                    }
                    if name == b"page" {
                        return Some(Ok(self.finish_page()));
                    }
                }
                Event::Eof => {
                    self.finished = true;
                    if !self.path.is_empty() {
                        let open = String::from_utf8_lossy(&self.path[self.path.len() - 1]).into_owned();
                        return Some(Err(quick_xml::Error::Io(Arc::new(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("the dump ends inside <{open}>"),
                        )))));
                    }
                    return None;
                }
                _ => {}
            }
        }
    }
}

/// Compresses `data` with bzip2 into `out` (fixtures and benchmarks).
pub fn write_bz2(data: &[u8], out: impl std::io::Write) -> io::Result<()> {
    use std::io::Write as _;
    let mut e = bzip2::write::BzEncoder::new(out, bzip2::Compression::best());
    e.write_all(data)?;
    e.finish()?;
    Ok(())
}

/// Compresses the XML export `xml` into `out` as Wikipedia's multistream dumps are: the
/// header, then `pages_per_stream` pages per bzip2 stream, the last stream ending the file
/// (fixtures and benchmarks).
pub fn write_bz2_multistream(xml: &[u8], pages_per_stream: usize, mut out: impl std::io::Write) -> io::Result<()> {
    let find = |from: usize, what: &[u8]| xml[from..].windows(what.len()).position(|w| w == what).map(|i| from + i);
    let mut start = 0;
    let mut end = find(0, b"<page>").unwrap_or(xml.len());
    while start < xml.len() {
        write_bz2(&xml[start..end], &mut out)?;
        start = end;
        for _ in 0..pages_per_stream.max(1) {
            match find(end, b"</page>") {
                Some(i) => end = i + b"</page>".len(),
                None => {
                    end = xml.len();
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Reads every page of an XML string (tests and small exports).
pub fn read_str(xml: &str) -> anyhow::Result<Vec<DumpPage>> {
    let mut out = Vec::new();
    for item in DumpReader::new(xml.as_bytes()) {
        match item? {
            Ok(p) => out.push(p),
            Err(b) => anyhow::bail!("bad page `{}`: {}", b.title, b.reason),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(rx: Receiver<io::Result<Vec<u8>>>) -> ChannelReader {
        ChannelReader { rx, cur: Vec::new(), off: 0, done: false }
    }

    #[test]
    fn the_end_of_the_dump_is_said_not_guessed() {
        // Data, then the end: all of it.
        let (tx, rx) = sync_channel(4);
        tx.send(Ok(b"<mediawiki>".to_vec())).unwrap();
        tx.send(Ok(Vec::new())).unwrap();
        let mut all = String::new();
        reader(rx).read_to_string(&mut all).unwrap();
        assert_eq!(all, "<mediawiki>");
        // Data, then the thread is gone without saying the end (it panicked): an error.
        let (tx, rx) = sync_channel(4);
        tx.send(Ok(b"<mediawiki>".to_vec())).unwrap();
        drop(tx);
        let err = reader(rx).read_to_string(&mut String::new()).unwrap_err();
        assert!(err.to_string().contains("stopped before the end"), "{err}");
        // A decompression error is passed on.
        let (tx, rx) = sync_channel(4);
        tx.send(Err(io::Error::new(io::ErrorKind::InvalidData, "bad block"))).unwrap();
        assert_eq!(reader(rx).read(&mut [0; 8]).unwrap_err().to_string(), "bad block");
    }
}
