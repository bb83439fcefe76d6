//! HTML helpers for the report: escaping and the page's style.

/// Text made safe inside HTML element content and double-quoted attributes.
pub fn escape(text: &str) -> String {
    html_escape::encode_double_quoted_attribute(text).into_owned()
}

/// At most `n` characters, with an ellipsis when cut (never splits a character).
pub fn clip(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        return text.to_string();
    }
    let mut out: String = text.chars().take(n.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The page's style sheet (inline: the file must open offline, alone).
pub const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:90em;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.25em .5em;vertical-align:top}\
th{background:#f3f3f3;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.dagbox{overflow:auto;border:1px solid #ddd;max-height:80vh}svg text{font:12px system-ui,sans-serif}\
svg text.op{fill:#555;font-size:11px}svg text.title{font-weight:600}.curves{display:flex;flex-wrap:wrap;gap:.5em}\
.legend span{display:inline-block;padding:0 .5em;margin-right:.4em;border:1px solid #555;border-radius:3px}\
iframe{width:100%;height:40em;border:1px solid #ddd}code{font-size:90%}";

#[cfg(test)]
mod tests {
    #[test]
    fn clip_counts_characters_not_bytes() {
        assert_eq!(super::clip("ééééé", 3), "éé…");
        assert_eq!(super::clip("abc", 3), "abc");
    }

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(super::escape(r#"<a href="x">&</a>"#), "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;");
    }
}
