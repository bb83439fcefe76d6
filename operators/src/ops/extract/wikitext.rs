//! A wikitext parser for what the knowledge graph needs: the redirect target, the infobox
//! (name and fields, each with its raw text, plain text and links), section headings, the
//! links of each section (target, anchor, label), categories, references, and the first
//! sentence of the lead as plain text.
//!
//! Hand-written because no maintained Rust crate parses MediaWiki markup (`parse_wiki_text`
//! is unmaintained and panics on some inputs). It is a single left-to-right pass with an
//! explicit stack of open constructs (`{{`, `{{{`, `[[`, `[`): a closer pops the nearest
//! matching opener, constructs left open at the end of the text or at a mismatched closer
//! fall back to plain text. Each byte is examined a bounded number of times, nesting is
//! capped at [`MAX_DEPTH`], and searches for closing tags remember where they failed, so
//! time is linear in the input and no input can panic or hang (the parser is fuzzed).
//!
//! What it understands: templates with nested templates, parser functions (`{{#if:…}}`) and
//! template parameters (`{{{1|default}}}`); wikilinks with labels, anchors, link trails
//! (`[[synapse]]s`) and the pipe trick; file links with captions (links in captions count);
//! category links with sort keys; external links; headings at any level; tables (as text);
//! comments; `<ref>` (counted, content skipped), `<nowiki>` (literal), `<math>`, `<chem>`,
//! `<pre>`, `<syntaxhighlight>`, `<gallery>`, `<references>` and other extension tags; HTML
//! tags (dropped, content kept); bold and italic quotes; HTML entities (named and numeric).

use std::borrow::Cow;

/// Deepest nesting of `{{`, `[[` and `[` constructs; deeper openers are read as text.
pub const MAX_DEPTH: usize = 48;
/// Longest lead text kept to find the first sentence.
const MAX_LEAD: usize = 8192;

/// A parsed page.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    /// `#REDIRECT [[Target]]`: the normalised target title.
    pub redirect: Option<String>,
    /// The first infobox-like template at the top level.
    pub infobox: Option<Infobox>,
    /// Sections in order; section 0 is the lead (level 0, empty title).
    pub sections: Vec<Section>,
    /// Links to articles (main namespace), in order of appearance.
    pub links: Vec<Link>,
    /// Category names (without the `Category:` prefix), in order, deduplicated.
    pub categories: Vec<String>,
    /// Normalised names of the templates used at the top level, in order.
    pub templates: Vec<String>,
    /// Number of references (`<ref>` tags, named re-uses included).
    pub refs: u32,
    /// First sentence of the lead, as plain text.
    pub description: Option<String>,
}

/// A section heading.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Section {
    /// Heading level: 2 for `== x ==`, …; 0 for the lead.
    pub level: u8,
    /// Heading text (plain).
    pub title: String,
    /// Index of the enclosing section (the nearest earlier one of a lower level).
    pub parent: Option<u32>,
}

/// Where a link appears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkContext {
    /// In running text (or a table, list or file caption) of a section.
    Body,
    /// In the value of an infobox field (index into [`Infobox::fields`]).
    Infobox(u32),
    /// In the arguments of another template (its normalised name), or rendered by a
    /// navigation template such as `{{main|…}}`.
    Template(String),
}

/// A link to an article.
#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    /// Normalised target title (first letter upper-case, spaces, no anchor).
    pub target: String,
    /// The part after `#`, if any.
    pub anchor: Option<String>,
    /// The displayed text when it differs from the target (with the link trail).
    pub label: Option<String>,
    /// Index into [`Parsed::sections`].
    pub section: u32,
    /// Where it appears.
    pub context: LinkContext,
}

/// An infobox.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Infobox {
    /// Normalised template name, lower case (`infobox disease`).
    pub name: String,
    /// Named fields in order (positional arguments are skipped).
    pub fields: Vec<Field>,
}

impl Infobox {
    /// A field by (case-insensitive, `_`/space-insensitive) name.
    pub fn field(&self, name: &str) -> Option<&Field> {
        let n = field_key(name);
        self.fields.iter().find(|f| f.name == n)
    }
}

/// One infobox field.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Field {
    /// Name, lower case, `_` as space, trimmed.
    pub name: String,
    /// The value's wikitext, trimmed.
    pub raw: String,
    /// The value as plain text.
    pub text: String,
    /// Normalised targets of the links in the value (labels ignored), in order.
    pub links: Vec<String>,
}

/// What a link target points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// An article (main namespace).
    Article {
        /// Normalised title.
        title: String,
        /// Anchor after `#`.
        anchor: Option<String>,
    },
    /// A category (`[[Category:X]]`; `colon` when written `[[:Category:X]]`, a plain link).
    Category {
        /// Category name.
        name: String,
        /// Leading colon: a link, not a categorisation.
        colon: bool,
    },
    /// A file or image (`File:`, `Image:`, `Media:`).
    File,
    /// Another namespace or wiki (`Wikipedia:`, `wikt:`, `fr:`, …), or an anchor on the same page.
    Other,
}

/// Namespace and interwiki prefixes that make a link not an article link.
const OTHER_PREFIXES: &[&str] = &[
    "talk",
    "user",
    "user talk",
    "wikipedia",
    "wikipedia talk",
    "wp",
    "wt",
    "project",
    "file talk",
    "mediawiki",
    "mediawiki talk",
    "template",
    "template talk",
    "help",
    "help talk",
    "category talk",
    "portal",
    "portal talk",
    "book",
    "book talk",
    "draft",
    "draft talk",
    "education program",
    "timedtext",
    "module",
    "module talk",
    "gadget",
    "topic",
    "special",
    "wikt",
    "wiktionary",
    "w",
    "m",
    "meta",
    "commons",
    "c",
    "s",
    "wikisource",
    "q",
    "wikiquote",
    "b",
    "wikibooks",
    "n",
    "wikinews",
    "v",
    "wikiversity",
    "voy",
    "species",
    "d",
    "wikidata",
    "mw",
    "doi",
    "pmid",
    "en",
    "de",
    "fr",
    "es",
    "it",
    "nl",
    "pl",
    "pt",
    "ru",
    "ja",
    "zh",
    "sv",
    "uk",
    "ar",
    "fa",
    "he",
    "ko",
    "fi",
    "no",
    "cs",
    "hu",
    "tr",
    "ro",
    "id",
    "vi",
    "ca",
    "da",
    "el",
    "simple",
    "iw",
];

/// [`normalize_title`], borrowing titles that are normalised already (most are: this
/// skips two allocations per page when every page's title is looked at).
pub fn normalized_title(raw: &str) -> Cow<'_, str> {
    let b = raw.as_bytes();
    let plain = b.iter().all(|&c| c.is_ascii() && c != b'_' && c != b'&' && (c == b' ' || !c.is_ascii_whitespace()));
    let spaced = b.first() == Some(&b' ') || b.last() == Some(&b' ') || b.windows(2).any(|w| w == b"  ");
    if plain && !spaced && !b.first().is_some_and(u8::is_ascii_lowercase) {
        Cow::Borrowed(raw)
    } else {
        Cow::Owned(normalize_title(raw))
    }
}

/// Normalises a title as MediaWiki does: entities decoded, `_` and runs of whitespace to
/// one space, trimmed, first letter upper-case.
pub fn normalize_title(raw: &str) -> String {
    let decoded = decode_entities(raw);
    let mut out = String::with_capacity(decoded.len());
    let mut space = false;
    for c in decoded.chars() {
        if c == '_' || c.is_whitespace() {
            space = !out.is_empty();
        } else {
            if space {
                out.push(' ');
                space = false;
            }
            out.push(c);
        }
    }
    upper_first(&out)
}

fn upper_first(s: &str) -> String {
    let mut cs = s.chars();
    match cs.next() {
        Some(f) if f.is_lowercase() => f.to_uppercase().chain(cs).collect(),
        _ => s.to_string(),
    }
}

/// Classifies a link target (the part before `|`).
pub fn classify_target(raw: &str) -> Target {
    let raw = raw.trim();
    let (colon, raw) = match raw.strip_prefix(':') {
        Some(r) => (true, r.trim_start()),
        None => (false, raw),
    };
    let (page, anchor) = match raw.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (raw, None),
    };
    if let Some((prefix, rest)) = page.split_once(':') {
        let p = normalize_title(prefix).to_lowercase();
        match p.as_str() {
            "category" => {
                let name = normalize_title(rest);
                return if name.is_empty() { Target::Other } else { Target::Category { name, colon } };
            }
            "file" | "image" | "media" => return Target::File,
            _ if OTHER_PREFIXES.contains(&p.as_str()) => return Target::Other,
            _ => {}
        }
    }
    let title = normalize_title(page);
    if title.is_empty() || title.contains(['{', '}', '[', ']', '<', '>', '|']) {
        return Target::Other;
    }
    let anchor = anchor.map(|a| decode_entities(a).trim().replace('_', " ")).filter(|a| !a.is_empty());
    Target::Article { title, anchor }
}

/// Normalised field or template name: lower case, `_` as space, whitespace collapsed.
pub fn field_key(s: &str) -> String {
    let n = normalize_title(s);
    n.to_lowercase()
}

/// Decodes HTML entities (the named ones wikitext uses, and numeric ones); unknown entities
/// are kept as written.
pub fn decode_entities(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        match entity_at(rest) {
            Some((len, text)) => {
                out.push_str(&text);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The entity at the start of `s` (which starts with `&`): its length and its text.
fn entity_at(s: &str) -> Option<(usize, Cow<'static, str>)> {
    let end = s.as_bytes().iter().take(12).position(|&b| b == b';')?;
    let name = &s[1..end];
    let text: Cow<'static, str> = if let Some(num) = name.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse::<u32>().ok()?,
        };
        Cow::Owned(char::from_u32(code).filter(|c| *c != '\0')?.to_string())
    } else {
        Cow::Borrowed(match name {
            "amp" => "&",
            "lt" => "<",
            "gt" => ">",
            "quot" => "\"",
            "apos" => "'",
            "nbsp" | "ensp" | "emsp" | "thinsp" => " ",
            "ndash" => "–",
            "mdash" => "—",
            "minus" => "−",
            "times" => "×",
            "middot" => "·",
            "deg" => "°",
            "plusmn" => "±",
            "micro" => "µ",
            "le" => "≤",
            "ge" => "≥",
            "hellip" => "…",
            "lsquo" => "‘",
            "rsquo" => "’",
            "ldquo" => "“",
            "rdquo" => "”",
            "laquo" => "«",
            "raquo" => "»",
            "copy" => "©",
            "reg" => "®",
            "trade" => "™",
            "alpha" => "α",
            "beta" => "β",
            "gamma" => "γ",
            "delta" => "δ",
            "kappa" => "κ",
            "lambda" => "λ",
            "mu" => "μ",
            "sup2" => "²",
            "sup3" => "³",
            "frac12" => "½",
            "zwj" | "zwnj" | "shy" | "lrm" | "rlm" => "",
            _ => return None,
        })
    };
    Some((end + 1, text))
}

/// A node inside an open construct.
#[derive(Clone, Debug)]
enum Node {
    Text(String),
    Link { target: Target, raw: String, label: Option<Vec<Node>>, caption: Vec<Node>, trail: String },
    Template(Template),
    Ext(Vec<Node>),
}

#[derive(Clone, Debug)]
struct Template {
    name: String,
    args: Vec<Arg>,
}

#[derive(Clone, Debug)]
struct Arg {
    name: Option<String>,
    nodes: Vec<Node>,
    raw: (usize, usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Template,
    Param,
    Link,
    Ext,
}

#[derive(Debug)]
struct Seg {
    name: Option<String>,
    nodes: Vec<Node>,
    start: usize,
    value_start: usize,
}

#[derive(Debug)]
struct Frame {
    kind: Kind,
    open: usize,
    segs: Vec<Seg>,
}

impl Frame {
    fn new(kind: Kind, open: usize, content_start: usize) -> Self {
        Frame {
            kind,
            open,
            segs: vec![Seg { name: None, nodes: Vec::new(), start: content_start, value_start: content_start }],
        }
    }
    fn cur(&mut self) -> &mut Vec<Node> {
        let last = self.segs.len() - 1;
        &mut self.segs[last].nodes
    }
}

fn push_text(nodes: &mut Vec<Node>, s: &str) {
    if s.is_empty() {
        return;
    }
    if let Some(Node::Text(t)) = nodes.last_mut() {
        t.push_str(s);
    } else {
        nodes.push(Node::Text(s.to_string()));
    }
}

/// Extension tags whose content is not wikitext (skipped, or kept as literal text).
const SKIP_TAGS: &[&str] = &[
    "math",
    "chem",
    "ce",
    "syntaxhighlight",
    "source",
    "score",
    "timeline",
    "graph",
    "templatedata",
    "gallery",
    "references",
    "imagemap",
    "mapframe",
    "maplink",
    "hiero",
    "inputbox",
    "categorytree",
    "includeonly",
    "noinclude",
];
const LITERAL_TAGS: &[&str] = &["nowiki", "pre", "code"];
/// HTML (and transparent MediaWiki) tags: the tag is dropped, its content kept.
const HTML_TAGS: &[&str] = &[
    "br",
    "small",
    "big",
    "sup",
    "sub",
    "span",
    "div",
    "center",
    "blockquote",
    "poem",
    "p",
    "b",
    "i",
    "u",
    "s",
    "del",
    "ins",
    "strike",
    "font",
    "abbr",
    "cite",
    "tt",
    "kbd",
    "var",
    "samp",
    "hr",
    "table",
    "tr",
    "td",
    "th",
    "caption",
    "ul",
    "ol",
    "li",
    "dl",
    "dt",
    "dd",
    "onlyinclude",
    "section",
    "mark",
    "q",
    "rb",
    "rt",
    "rp",
    "ruby",
    "wbr",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "em",
    "strong",
    "bdi",
    "dfn",
    "time",
    "data",
    "bdo",
    "tbody",
    "thead",
];

/// The target of `#REDIRECT [[Target]]`, without parsing the rest of the page.
pub fn parse_redirect(text: &str) -> Option<String> {
    let head = text.trim_start();
    if head.len() < 9 || !head.as_bytes()[..9].eq_ignore_ascii_case(b"#redirect") {
        return None;
    }
    let rest = &head[9..];
    let i = rest.find("[[")?;
    if !rest[..i].trim().trim_start_matches(':').trim().is_empty() {
        return None;
    }
    let after = &rest[i + 2..];
    let j = after.find("]]")?;
    let t = after[..j].split('|').next().unwrap_or("");
    match classify_target(t) {
        Target::Article { title, .. } => Some(title),
        _ => None,
    }
}

/// Parses a page's wikitext.
pub fn parse(text: &str) -> Parsed {
    let mut p = Parser::new(text);
    p.run();
    p.finish()
}

struct Parser<'a> {
    src: &'a str,
    b: &'a [u8],
    pos: usize,
    stack: Vec<Frame>,
    out: Parsed,
    section: u32,
    lead: String,
    lead_done: bool,
    /// Closing strings known to be absent after a position (`-->`, `</ref>`, …).
    missing: Vec<(String, usize)>,
    /// Pending text at the top level, flushed to the lead buffer.
    line_start: bool,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Self {
        let mut out = Parsed::default();
        out.sections.push(Section { level: 0, title: String::new(), parent: None });
        Parser {
            src,
            b: src.as_bytes(),
            pos: 0,
            stack: Vec::new(),
            out,
            section: 0,
            lead: String::new(),
            lead_done: false,
            missing: Vec::new(),
            line_start: true,
        }
    }

    fn finish(mut self) -> Parsed {
        self.out.description = first_sentence(&self.lead);
        let mut seen = std::collections::HashSet::new();
        self.out.categories.retain(|c| seen.insert(c.clone()));
        self.out
    }

    /// Finds `needle` (ASCII, case-insensitive) at or after `from`, remembering failures so
    /// that repeated searches for an absent closer stay linear.
    fn find_ci(&mut self, needle: &str, from: usize) -> Option<usize> {
        if let Some((_, after)) = self.missing.iter().find(|(n, _)| n == needle)
            && from >= *after
        {
            return None;
        }
        let nb = needle.as_bytes();
        let hay = &self.b[from.min(self.b.len())..];
        let found = if nb.is_empty() || hay.len() < nb.len() {
            None
        } else {
            let first = nb[0].to_ascii_lowercase();
            let mut i = 0;
            let mut hit = None;
            while i + nb.len() <= hay.len() {
                if hay[i].to_ascii_lowercase() == first && hay[i..i + nb.len()].eq_ignore_ascii_case(nb) {
                    hit = Some(from + i);
                    break;
                }
                i += 1;
            }
            hit
        };
        if found.is_none() {
            match self.missing.iter_mut().find(|(n, _)| n == needle) {
                Some(m) => m.1 = m.1.min(from),
                None => self.missing.push((needle.to_string(), from)),
            }
        }
        found
    }

    fn run(&mut self) {
        self.out.redirect = parse_redirect(self.src);
        let n = self.b.len();
        let mut text_start = self.pos;
        while self.pos < n {
            let c = self.b[self.pos];
            let special = matches!(c, b'{' | b'}' | b'[' | b']' | b'|' | b'=' | b'<' | b'\n' | b'&' | b'\'' | b'_');
            if !special {
                self.pos += 1;
                continue;
            }
            if text_start < self.pos {
                let t = &self.src[text_start..self.pos];
                self.emit_text(t);
            }
            self.step();
            text_start = self.pos;
        }
        if text_start < n {
            let t = &self.src[text_start..n];
            self.emit_text(t);
        }
        // Unclosed constructs become text.
        while let Some(f) = self.stack.pop() {
            let nodes = self.flatten(f);
            self.emit_nodes(nodes);
        }
    }

    fn starts(&self, s: &str) -> bool {
        self.b[self.pos..].starts_with(s.as_bytes())
    }

    /// Handles the special byte at `self.pos` and advances past what it consumed.
    fn step(&mut self) {
        let c = self.b[self.pos];
        let at_line_start = self.pos == 0 || self.b[self.pos - 1] == b'\n';
        match c {
            b'\n' => {
                if let Some(f) = self.stack.last()
                    && ((f.kind == Kind::Link && f.segs.len() == 1) || f.kind == Kind::Ext)
                {
                    // A line break ends a would-be link target or external link: text.
                    if let Some(f) = self.stack.pop() {
                        let nodes = self.flatten(f);
                        self.emit_nodes(nodes);
                    }
                }
                self.emit_text("\n");
                self.pos += 1;
                if self.stack.is_empty() && self.pos < self.b.len() && self.b[self.pos] == b'=' {
                    self.heading();
                }
            }
            b'=' if at_line_start && self.stack.is_empty() => self.heading(),
            b'=' => {
                if let Some(f) = self.stack.last_mut()
                    && f.kind == Kind::Template
                    && f.segs.len() > 1
                {
                    let pos = self.pos;
                    let last = f.segs.len() - 1;
                    let seg = &mut f.segs[last];
                    if seg.name.is_none() {
                        seg.name = Some(field_key(&plain(&seg.nodes)));
                        seg.nodes.clear();
                        seg.value_start = pos + 1;
                        self.pos += 1;
                        return;
                    }
                }
                self.emit_text("=");
                self.pos += 1;
            }
            b'{' => {
                if self.starts("{{{") && !self.starts("{{{{") && self.stack.len() < MAX_DEPTH {
                    self.stack.push(Frame::new(Kind::Param, self.pos, self.pos + 3));
                    self.pos += 3;
                } else if self.starts("{{") && self.stack.len() < MAX_DEPTH {
                    self.stack.push(Frame::new(Kind::Template, self.pos, self.pos + 2));
                    self.pos += 2;
                } else {
                    self.emit_text("{");
                    self.pos += 1;
                }
            }
            b'}' => {
                if self.starts("}}}") && self.top_is(Kind::Param) {
                    self.pos += 3;
                    self.close(Kind::Param);
                } else if self.starts("}}") && self.find_frame(Kind::Template).is_some() {
                    self.pos += 2;
                    self.close(Kind::Template);
                } else {
                    self.emit_text("}");
                    self.pos += 1;
                }
            }
            b'[' => {
                if self.starts("[[") && self.stack.len() < MAX_DEPTH {
                    self.stack.push(Frame::new(Kind::Link, self.pos, self.pos + 2));
                    self.pos += 2;
                } else if self.stack.len() < MAX_DEPTH && is_url_start(&self.b[self.pos + 1..]) {
                    self.stack.push(Frame::new(Kind::Ext, self.pos, self.pos + 1));
                    self.pos += 1;
                } else {
                    self.emit_text("[");
                    self.pos += 1;
                }
            }
            b']' => {
                if self.starts("]]") && self.find_frame(Kind::Link).is_some() && !self.top_is(Kind::Ext) {
                    self.pos += 2;
                    self.close(Kind::Link);
                } else if self.top_is(Kind::Ext) {
                    self.pos += 1;
                    self.close(Kind::Ext);
                } else {
                    self.emit_text("]");
                    self.pos += 1;
                }
            }
            b'|' => {
                let pos = self.pos;
                if let Some(f) = self.stack.last_mut()
                    && matches!(f.kind, Kind::Template | Kind::Param | Kind::Link)
                {
                    f.segs.push(Seg { name: None, nodes: Vec::new(), start: pos + 1, value_start: pos + 1 });
                    self.pos += 1;
                    return;
                }
                self.emit_text("|");
                self.pos += 1;
            }
            b'<' => self.tag(),
            b'&' => {
                let rest = &self.src[self.pos..];
                match entity_at(rest) {
                    Some((len, text)) => {
                        self.emit_text(&text);
                        self.pos += len;
                    }
                    None => {
                        self.emit_text("&");
                        self.pos += 1;
                    }
                }
            }
            b'\'' => {
                let mut k = self.pos;
                while k < self.b.len() && self.b[k] == b'\'' {
                    k += 1;
                }
                let run = k - self.pos;
                if run >= 2 {
                    // Bold / italic markers: no text. (A run of 4 is an apostrophe and bold.)
                    if run == 4 {
                        self.emit_text("'");
                    }
                } else {
                    self.emit_text("'");
                }
                self.pos = k;
            }
            b'_' => {
                // Behaviour switches like __NOTOC__ render nothing.
                if self.starts("__") {
                    let rest = &self.b[self.pos + 2..];
                    let len = rest.iter().take(24).take_while(|c| c.is_ascii_uppercase()).count();
                    if len > 0 && rest.len() >= len + 2 && &rest[len..len + 2] == b"__" {
                        self.pos += len + 4;
                        return;
                    }
                }
                self.emit_text("_");
                self.pos += 1;
            }
            _ => {
                let ch = self.src[self.pos..].chars().next().map(|c| c.len_utf8()).unwrap_or(1);
                let t = &self.src[self.pos..self.pos + ch];
                self.emit_text(t);
                self.pos += ch;
            }
        }
    }

    fn top_is(&self, k: Kind) -> bool {
        self.stack.last().is_some_and(|f| f.kind == k)
    }

    /// Index of the nearest open frame of kind `k`, looking through at most a few frames.
    fn find_frame(&self, k: Kind) -> Option<usize> {
        self.stack.iter().enumerate().rev().take(8).find(|(_, f)| f.kind == k).map(|(i, _)| i)
    }

    /// Closes the nearest frame of kind `k` (frames above it become text), and hands the
    /// resulting node to the parent frame or the top level.
    fn close(&mut self, k: Kind) {
        let Some(i) = self.find_frame(k) else { return };
        while self.stack.len() > i + 1 {
            if let Some(f) = self.stack.pop() {
                let nodes = self.flatten(f);
                self.emit_nodes(nodes);
            }
        }
        let Some(mut frame) = self.stack.pop() else { return };
        let end = self.pos
            - if k == Kind::Param {
                3
            } else if k == Kind::Ext {
                1
            } else {
                2
            };
        let node = match k {
            Kind::Template => {
                let name_nodes = std::mem::take(&mut frame.segs[0].nodes);
                let name = field_key(&plain(&name_nodes));
                let starts: Vec<usize> = frame.segs.iter().map(|s| s.start).collect();
                let args = frame
                    .segs
                    .drain(1..)
                    .enumerate()
                    .map(|(j, s)| {
                        // Segment j+1 ends at the `|` before segment j+2, or at the closer.
                        let seg_end = starts.get(j + 2).map(|st| st - 1).unwrap_or(end);
                        Arg { name: s.name, nodes: s.nodes, raw: (s.value_start, seg_end) }
                    })
                    .collect::<Vec<_>>();
                if name.is_empty() {
                    Some(Node::Text(self.src[frame.open..self.pos].to_string()))
                } else {
                    Some(Node::Template(Template { name, args }))
                }
            }
            Kind::Param => {
                // {{{name|default}}}: the default's content.
                if frame.segs.len() > 1 { Some(Node::Ext(frame.segs.swap_remove(1).nodes)) } else { None }
            }
            Kind::Ext => {
                let mut nodes = std::mem::take(&mut frame.segs[0].nodes);
                // `[url label]`: the label is what follows the first space of the text.
                let mut label = Vec::new();
                let mut found = false;
                for node in nodes.drain(..) {
                    match node {
                        Node::Text(t) if !found => {
                            if let Some(i) = t.find(' ') {
                                found = true;
                                push_text(&mut label, t[i + 1..].trim_start());
                            }
                        }
                        other if found => label.push(other),
                        _ => {}
                    }
                }
                Some(Node::Ext(label))
            }
            Kind::Link => self.link_node(frame),
        };
        if let Some(node) = node {
            self.emit_node(node);
        }
    }

    fn link_node(&mut self, mut frame: Frame) -> Option<Node> {
        let target_nodes = std::mem::take(&mut frame.segs[0].nodes);
        let has_structure = target_nodes.iter().any(|n| !matches!(n, Node::Text(_)));
        let raw_target = plain(&target_nodes);
        let target =
            if has_structure || raw_target.contains('\n') { Target::Other } else { classify_target(&raw_target) };
        let raw = clean_spaces(&decode_entities(raw_target.split('#').next().unwrap_or("")).replace('_', " "));
        let raw = raw.trim_start_matches(':').trim().to_string();
        // Link trail: letters right after `]]` extend the label.
        let mut trail = String::new();
        if matches!(target, Target::Article { .. }) {
            let rest = &self.src[self.pos..];
            let len: usize = rest.chars().take_while(|c| c.is_alphabetic()).map(|c| c.len_utf8()).sum();
            if len > 0 && len < 64 {
                trail = rest[..len].to_string();
                self.pos += len;
            }
        }
        match target {
            Target::Other if has_structure || raw_target.contains('\n') => {
                // Not a link: give back the text.
                let mut nodes = vec![Node::Text("[[".into())];
                nodes.extend(target_nodes);
                for s in frame.segs.drain(1..) {
                    push_text(&mut nodes, "|");
                    nodes.extend(s.nodes);
                }
                push_text(&mut nodes, "]]");
                Some(Node::Ext(nodes))
            }
            Target::File => {
                // File options and caption: links in the caption (the last part) count.
                let caption = frame.segs.pop().filter(|_| !frame.segs.is_empty()).map(|s| s.nodes).unwrap_or_default();
                Some(Node::Link { target, raw, label: None, caption, trail })
            }
            _ => {
                let label = if frame.segs.len() > 1 {
                    let mut nodes = Vec::new();
                    for (j, s) in frame.segs.drain(1..).enumerate() {
                        if j > 0 {
                            push_text(&mut nodes, "|");
                        }
                        nodes.extend(s.nodes);
                    }
                    Some(nodes)
                } else {
                    None
                };
                Some(Node::Link { target, raw, label, caption: Vec::new(), trail })
            }
        }
    }

    /// An open frame that never closed, as the nodes it stands for.
    fn flatten(&mut self, f: Frame) -> Vec<Node> {
        let opener = match f.kind {
            Kind::Template => "{{",
            Kind::Param => "{{{",
            Kind::Link => "[[",
            Kind::Ext => "[",
        };
        let mut nodes = vec![Node::Text(opener.to_string())];
        for (j, s) in f.segs.into_iter().enumerate() {
            if j > 0 {
                push_text(&mut nodes, "|");
            }
            if let Some(name) = s.name {
                push_text(&mut nodes, &name);
                push_text(&mut nodes, "=");
            }
            for n in s.nodes {
                match n {
                    Node::Text(t) => push_text(&mut nodes, &t),
                    other => nodes.push(other),
                }
            }
        }
        nodes
    }

    fn emit_text(&mut self, t: &str) {
        if let Some(f) = self.stack.last_mut() {
            push_text(f.cur(), t);
        } else if !self.lead_done && self.section == 0 {
            if self.lead.len() < MAX_LEAD {
                self.lead.push_str(t);
            } else {
                self.lead_done = true;
            }
        }
        let _ = self.line_start;
    }

    fn emit_nodes(&mut self, nodes: Vec<Node>) {
        for n in nodes {
            match n {
                Node::Text(t) => self.emit_text(&t),
                other => self.emit_node(other),
            }
        }
    }

    fn emit_node(&mut self, node: Node) {
        if let Some(f) = self.stack.last_mut() {
            f.cur().push(node);
            return;
        }
        match node {
            Node::Text(t) => self.emit_text(&t),
            Node::Ext(nodes) => self.emit_nodes(nodes),
            Node::Link { target, raw, label, caption, trail } => {
                let section = self.section;
                match target {
                    Target::Article { title, anchor } => {
                        let shown = link_display(&title, &raw, label.as_deref(), &trail);
                        self.emit_text(&shown);
                        let label_text = label_for(&title, shown);
                        if let Some(l) = label.as_deref() {
                            self.collect_links(l, LinkContext::Body);
                        }
                        self.out.links.push(Link {
                            target: title,
                            anchor,
                            label: label_text,
                            section,
                            context: LinkContext::Body,
                        });
                    }
                    Target::Category { name, colon } => {
                        if colon {
                            self.emit_text(&name);
                        } else {
                            self.out.categories.push(name);
                        }
                    }
                    Target::File => self.collect_links(&caption, LinkContext::Body),
                    Target::Other => {
                        if let Some(l) = label.as_deref() {
                            let t = plain(l);
                            self.emit_text(&t);
                        }
                    }
                }
            }
            Node::Template(t) => self.top_template(t),
        }
    }

    /// Links inside nodes (labels, captions, template arguments), pushed with `context`.
    fn collect_links(&mut self, nodes: &[Node], context: LinkContext) {
        let section = self.section;
        let mut found = Vec::new();
        walk_links(nodes, &mut found, &mut self.out.categories);
        for (title, anchor, label) in found {
            self.out.links.push(Link { target: title, anchor, label, section, context: context.clone() });
        }
    }

    fn top_template(&mut self, t: Template) {
        self.out.templates.push(t.name.clone());
        let name = t.name.as_str();
        if is_infobox(name) && self.out.infobox.is_none() {
            let mut fields = Vec::new();
            for a in &t.args {
                let Some(fname) = &a.name else { continue };
                if fname.is_empty() {
                    continue;
                }
                let idx = fields.len() as u32;
                let mut found = Vec::new();
                let mut cats = Vec::new();
                walk_links(&a.nodes, &mut found, &mut cats);
                let raw = if a.raw.1 > a.raw.0 && a.raw.1 <= self.src.len() {
                    self.src.get(a.raw.0..a.raw.1).unwrap_or("").trim().to_string()
                } else {
                    String::new()
                };
                fields.push(Field {
                    name: fname.clone(),
                    raw,
                    text: clean_spaces(&plain(&a.nodes)),
                    links: found.iter().map(|(t, _, _)| t.clone()).collect(),
                });
                let section = self.section;
                for (title, anchor, label) in found {
                    self.out.links.push(Link {
                        target: title,
                        anchor,
                        label,
                        section,
                        context: LinkContext::Infobox(idx),
                    });
                }
            }
            self.out.infobox = Some(Infobox { name: t.name, fields });
            return;
        }
        if is_citation(name) || name.starts_with('#') && !name.starts_with("#if") && !name.starts_with("#switch") {
            return;
        }
        if matches!(name, "main" | "main article" | "see also" | "further" | "further information" | "details" | "see")
        {
            let section = self.section;
            for a in t.args.iter().filter(|a| a.name.is_none()) {
                if let Target::Article { title, anchor } = classify_target(&plain(&a.nodes)) {
                    self.out.links.push(Link {
                        target: title,
                        anchor,
                        label: None,
                        section,
                        context: LinkContext::Template(t.name.clone()),
                    });
                }
            }
            return;
        }
        // Inline text templates contribute their text to the lead.
        let text = render_template(&t);
        if !text.is_empty() {
            self.emit_text(&text);
        }
        for a in &t.args {
            self.collect_links(&a.nodes, LinkContext::Template(t.name.clone()));
        }
    }

    fn heading(&mut self) {
        let start = self.pos;
        let line_end = self.b[start..].iter().position(|&c| c == b'\n').map(|i| start + i).unwrap_or(self.b.len());
        let line = &self.src[start..line_end];
        // Trailing comments and spaces are allowed after the closing `=`.
        let mut body = line.trim_end();
        while let Some(i) = body.rfind("<!--") {
            if body[i..].contains("-->") && body.ends_with("-->") {
                body = body[..i].trim_end();
            } else {
                break;
            }
        }
        let lead = body.bytes().take_while(|&c| c == b'=').count();
        let trail = body.bytes().rev().take_while(|&c| c == b'=').count();
        let level = lead.min(trail).min(6);
        if level == 0 || body.len() <= 2 * level {
            self.emit_text("=");
            self.pos += 1;
            return;
        }
        let inner = &body[level..body.len() - level];
        let sub = parse_inline(inner);
        let title = clean_spaces(&plain(&sub.nodes));
        let level = level as u8;
        let parent = self.out.sections.iter().enumerate().rev().find(|(_, s)| s.level < level).map(|(i, _)| i as u32);
        self.out.sections.push(Section { level, title, parent });
        self.section = (self.out.sections.len() - 1) as u32;
        self.lead_done = true;
        // Links inside the heading belong to the new section.
        let mut found = Vec::new();
        walk_links(&sub.nodes, &mut found, &mut self.out.categories);
        for (t, a, l) in found {
            self.out.links.push(Link {
                target: t,
                anchor: a,
                label: l,
                section: self.section,
                context: LinkContext::Body,
            });
        }
        self.pos = line_end;
    }

    fn tag(&mut self) {
        let rest = &self.src[self.pos..];
        if rest.starts_with("<!--") {
            match self.find_ci("-->", self.pos + 4) {
                Some(e) => self.pos = e + 3,
                None => self.pos = self.b.len(),
            }
            return;
        }
        // Tag name.
        let bytes = rest.as_bytes();
        let closing = bytes.get(1) == Some(&b'/');
        let name_start = if closing { 2 } else { 1 };
        let name_len = bytes[name_start..].iter().take(20).take_while(|c| c.is_ascii_alphanumeric()).count();
        if name_len == 0 {
            self.emit_text("<");
            self.pos += 1;
            return;
        }
        let name = rest[name_start..name_start + name_len].to_ascii_lowercase();
        // End of the tag (bounded: tags don't span more than a few hundred bytes).
        let Some(gt) = bytes.iter().take(1024).position(|&c| c == b'>') else {
            self.emit_text("<");
            self.pos += 1;
            return;
        };
        let self_closing = gt > 0 && bytes[gt - 1] == b'/';
        let after = self.pos + gt + 1;
        if closing {
            // A stray closing tag: drop it.
            self.pos = after;
            return;
        }
        if name == "ref" {
            self.out.refs += 1;
            if self_closing {
                self.pos = after;
            } else {
                match self.find_ci("</ref>", after) {
                    Some(e) => self.pos = e + 6,
                    None => self.pos = after,
                }
            }
            return;
        }
        if SKIP_TAGS.contains(&name.as_str()) || LITERAL_TAGS.contains(&name.as_str()) {
            if self_closing {
                self.pos = after;
                return;
            }
            let close = format!("</{name}>");
            match self.find_ci(&close, after) {
                Some(e) => {
                    if LITERAL_TAGS.contains(&name.as_str()) {
                        let lit = decode_entities(&self.src[after..e]).into_owned();
                        self.emit_text(&lit);
                    } else if name == "math" || name == "chem" || name == "ce" {
                        self.emit_text("…");
                    }
                    self.pos = e + close.len();
                }
                None => self.pos = after,
            }
            return;
        }
        if !HTML_TAGS.contains(&name.as_str()) {
            // Not a tag MediaWiki knows: a literal `<`.
            self.emit_text("<");
            self.pos += 1;
            return;
        }
        if name == "br" {
            self.emit_text(" ");
        }
        // HTML tags: drop the tag, keep the content.
        self.pos = after;
    }
}

fn is_url_start(b: &[u8]) -> bool {
    const SCHEMES: &[&[u8]] = &[b"http://", b"https://", b"//", b"ftp://", b"mailto:", b"news:", b"irc://"];
    SCHEMES.iter().any(|s| b.len() >= s.len() && b[..s.len()].eq_ignore_ascii_case(s))
}

/// Templates whose arguments are infobox fields.
pub fn is_infobox(name: &str) -> bool {
    name.starts_with("infobox")
        || matches!(
            name,
            "taxobox"
                | "automatic taxobox"
                | "speciesbox"
                | "subspeciesbox"
                | "infraspeciesbox"
                | "virusbox"
                | "gnf protein box"
                | "drugbox"
                | "chembox"
                | "medical resources"
        )
}

fn is_citation(name: &str) -> bool {
    name.starts_with("cite")
        || name.starts_with("vcite")
        || name.starts_with("citation")
        || matches!(name, "sfn" | "harvnb" | "harv" | "efn" | "refn" | "r" | "rp" | "webarchive" | "dead link")
}

/// Links in nodes, recursively (except inside citation templates).
fn walk_links(nodes: &[Node], out: &mut Vec<(String, Option<String>, Option<String>)>, cats: &mut Vec<String>) {
    for n in nodes {
        match n {
            Node::Text(_) => {}
            Node::Ext(inner) => walk_links(inner, out, cats),
            Node::Link { target, raw, label, caption, trail } => match target {
                Target::Article { title, anchor } => {
                    let shown = link_display(title, raw, label.as_deref(), trail);
                    out.push((title.clone(), anchor.clone(), label_for(title, shown)));
                    if let Some(l) = label {
                        walk_links(l, out, cats);
                    }
                }
                Target::File => walk_links(caption, out, cats),
                Target::Category { name, colon: false } => cats.push(name.clone()),
                _ => {}
            },
            Node::Template(t) => {
                if is_citation(&t.name) {
                    continue;
                }
                if matches!(t.name.as_str(), "main" | "see also" | "further" | "details") {
                    for a in t.args.iter().filter(|a| a.name.is_none()) {
                        if let Target::Article { title, anchor } = classify_target(&plain(&a.nodes)) {
                            out.push((title, anchor, None));
                        }
                    }
                    continue;
                }
                for a in &t.args {
                    walk_links(&a.nodes, out, cats);
                }
            }
        }
    }
}

/// The text a link shows: its label (pipe trick applied) or its target as written, then
/// the link trail (`[[synapse]]s` shows "synapses").
fn link_display(title: &str, raw: &str, label: Option<&[Node]>, trail: &str) -> String {
    let base = match label {
        None => raw.to_string(),
        Some(nodes) => {
            let l = clean_spaces(&plain(nodes));
            if l.is_empty() {
                // Pipe trick: [[Tissue (biology)|]] shows "Tissue".
                let t = match title.find(" (") {
                    Some(i) => &title[..i],
                    None => title,
                };
                t.split_once(':').map(|(_, r)| r).unwrap_or(t).trim().to_string()
            } else {
                l
            }
        }
    };
    format!("{base}{trail}")
}

/// The label to record: the shown text, unless it is the title itself (up to the case of
/// the first letter, which MediaWiki ignores).
fn label_for(title: &str, shown: String) -> Option<String> {
    if upper_first(&shown) == title { None } else { Some(shown) }
}

/// Plain text of nodes.
fn plain(nodes: &[Node]) -> String {
    let mut s = String::new();
    plain_into(nodes, &mut s);
    s
}

fn plain_into(nodes: &[Node], out: &mut String) {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Ext(inner) => plain_into(inner, out),
            Node::Link { target, raw, label, trail, .. } => match target {
                Target::Article { title, .. } => out.push_str(&link_display(title, raw, label.as_deref(), trail)),
                Target::Category { name, colon: true } => out.push_str(name),
                Target::Other => {
                    if let Some(l) = label {
                        plain_into(l, out);
                    }
                }
                _ => {}
            },
            Node::Template(t) => out.push_str(&render_template(t)),
        }
    }
}

/// Text of the inline templates that matter for plain text; others render nothing.
fn render_template(t: &Template) -> String {
    let pos: Vec<String> = t.args.iter().filter(|a| a.name.is_none()).map(|a| clean_spaces(&plain(&a.nodes))).collect();
    let p = |i: usize| pos.get(i).cloned().unwrap_or_default();
    match t.name.as_str() {
        "lang" | "transl" => p(1),
        "nowrap" | "nobr" | "small" | "smaller" | "big" | "resize" | "em" | "strong" | "vr" | "visible anchor"
        | "ipa" | "ipac-en" | "respell" => p(if t.name == "resize" && pos.len() > 1 { 1 } else { 0 }),
        "abbr" | "abbrlink" => p(0),
        "convert" | "cvt" => {
            let unit = p(1);
            if unit.is_empty() { p(0) } else { format!("{} {}", p(0), unit) }
        }
        "as of" => {
            let lc = t.args.iter().any(|a| a.name.as_deref() == Some("lc"));
            format!("{} {}", if lc { "as of" } else { "As of" }, p(0))
        }
        "circa" | "c." => format!("c. {}", p(0)),
        "!" => "|".into(),
        "=" => "=".into(),
        "'" => "'".into(),
        "ndash" | "en dash" => "–".into(),
        "mdash" | "em dash" => "—".into(),
        "snd" | "spaced ndash" | "spaced en dash" => " – ".into(),
        "nbsp" => " ".into(),
        "icd10" => {
            // {{ICD10|F|84|0|f|80}} -> F84.0
            let (a, b, c) = (p(0), p(1), p(2));
            if c.is_empty() { format!("{a}{b}") } else { format!("{a}{b}.{c}") }
        }
        "icd9" | "icd9proc" | "icdo" => p(0),
        "#if" | "#ifeq" | "#switch" | "#tag" => String::new(),
        _ => String::new(),
    }
}

/// Collapses whitespace runs to one space and trims.
pub fn clean_spaces(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        if c.is_whitespace() {
            space = !out.is_empty();
        } else {
            if space {
                out.push(' ');
                space = false;
            }
            out.push(c);
        }
    }
    out
}

struct Inline {
    nodes: Vec<Node>,
}

/// Parses a short inline fragment (a heading) into nodes.
fn parse_inline(s: &str) -> Inline {
    let mut p = Parser::new(s);
    p.stack.push(Frame::new(Kind::Ext, 0, 0));
    let n = p.b.len();
    let mut text_start = 0;
    while p.pos < n {
        let c = p.b[p.pos];
        if !matches!(c, b'{' | b'}' | b'[' | b']' | b'|' | b'<' | b'&' | b'\'') {
            p.pos += 1;
            continue;
        }
        if text_start < p.pos {
            let t = &p.src[text_start..p.pos];
            p.emit_text(t);
        }
        match c {
            b']' if !p.starts("]]") => {
                p.emit_text("]");
                p.pos += 1;
            }
            b'|' if p.stack.len() == 1 => {
                p.emit_text("|");
                p.pos += 1;
            }
            _ => p.step(),
        }
        text_start = p.pos;
        if p.stack.is_empty() {
            p.stack.push(Frame::new(Kind::Ext, 0, 0));
        }
    }
    if text_start < n {
        let t = &p.src[text_start..n];
        p.emit_text(t);
    }
    while p.stack.len() > 1 {
        if let Some(f) = p.stack.pop() {
            let nodes = p.flatten(f);
            for node in nodes {
                match node {
                    Node::Text(t) => p.emit_text(&t),
                    other => p.emit_node(other),
                }
            }
        }
    }
    let nodes = p.stack.pop().map(|mut f| std::mem::take(f.cur())).unwrap_or_default();
    Inline { nodes }
}

/// Abbreviations after which a period does not end a sentence.
const ABBREVIATIONS: &[&str] = &[
    "e.g", "i.e", "etc", "vs", "cf", "dr", "mr", "mrs", "ms", "st", "no", "approx", "ca", "c", "fig", "al", "inc",
    "jr", "sr", "prof", "vol", "op", "resp", "var", "subsp", "sp", "spp", "ssp", "u.s", "u.k", "a.k.a", "viz",
];

/// The first sentence of the lead's plain text.
pub fn first_sentence(lead: &str) -> Option<String> {
    // The first paragraph that looks like prose (not a list, table or leftover markup).
    let mut para = String::new();
    for line in lead.split('\n') {
        let l = line.trim();
        if l.is_empty() {
            if !para.is_empty() {
                break;
            }
            continue;
        }
        if l.starts_with(['*', '#', ':', ';', '{', '|', '!', '}', '[', '=']) {
            if !para.is_empty() {
                break;
            }
            continue;
        }
        if !para.is_empty() {
            para.push(' ');
        }
        para.push_str(l);
    }
    let text = clean_spaces(&para.replace("()", "").replace("( )", "").replace(" ,", ",").replace(" .", "."));
    if text.is_empty() {
        return None;
    }
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    for (k, &(i, c)) in chars.iter().enumerate() {
        if !matches!(c, '.' | '?' | '!') {
            continue;
        }
        let next = chars.get(k + 1).map(|x| x.1);
        let after = chars.get(k + 2).map(|x| x.1);
        let ends = match next {
            None => true,
            Some(n) if n.is_whitespace() => {
                after.is_none_or(|a| a.is_uppercase() || a.is_ascii_digit() || a == '"' || a == '(')
            }
            _ => false,
        };
        if !ends {
            continue;
        }
        if c == '.' {
            let word: String = text[..i].chars().rev().take_while(|ch| !ch.is_whitespace() && *ch != '(').collect();
            let word: String = word.chars().rev().collect::<String>().to_lowercase();
            if ABBREVIATIONS.contains(&word.as_str())
                || (word.chars().count() == 1 && word.chars().all(char::is_alphabetic))
            {
                continue;
            }
        }
        return Some(text[..i + c.len_utf8()].to_string());
    }
    Some(text)
}
