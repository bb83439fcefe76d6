//! `${VAR}` and `${VAR:-default}` interpolation of string values from the environment.
//!
//! Interpolation is for non-secret values only: an interpolated value becomes part of the
//! parameters, and so of the stage key and the manifests. Variables whose names look like
//! secrets (`*_KEY`, `*TOKEN*`, `*SECRET*`, `*PASSWORD*`) are refused; name them with
//! `api_key_env:` instead. `$${` writes a literal `${`.

/// The result of interpolating one string.
#[derive(Debug, PartialEq)]
pub struct Interpolated {
    /// The new text.
    pub text: String,
    /// Whether any `${...}` was replaced.
    pub replaced: bool,
}

/// Whether an environment variable name looks like it holds a secret.
pub fn looks_secret(name: &str) -> bool {
    name.to_ascii_uppercase().split(['_', '-']).any(|part| {
        matches!(
            part,
            "KEY" | "APIKEY" | "TOKEN" | "SECRET" | "PASSWORD" | "PASSWD" | "PASS" | "CREDENTIAL" | "CREDENTIALS"
        )
    })
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Replaces every `${NAME}` / `${NAME:-default}` in `s` using `lookup`.
pub fn interpolate(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Interpolated, String> {
    if !s.contains('$') {
        return Ok(Interpolated { text: s.to_string(), replaced: false });
    }
    let mut out = String::with_capacity(s.len());
    let mut replaced = false;
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
            continue;
        }
        if !after.starts_with("${") {
            out.push('$');
            rest = &after[1..];
            continue;
        }
        let Some(end) = after.find('}') else {
            return Err(format!("unterminated `${{` in {s:?} (write `$${{` for a literal `${{`)"));
        };
        let inner = &after[2..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        if !valid_name(name) {
            return Err(format!("`${{{inner}}}` is not a variable reference (names are letters, digits and _)"));
        }
        if looks_secret(name) {
            return Err(format!(
                "`${{{name}}}` looks like a secret; secrets are never interpolated into pipelines (they would be stored in manifests). Name the variable instead, e.g. `api_key_env: {name}`"
            ));
        }
        let value = match (lookup(name), default) {
            (Some(v), _) => v,
            (None, Some(d)) => d.to_string(),
            (None, None) => {
                return Err(format!(
                    "environment variable `{name}` is not set (give a default with `${{{name}:-value}}`)"
                ));
            }
        };
        out.push_str(&value);
        replaced = true;
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Interpolated { text: out, replaced })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME_DIR" => Some("/h".into()),
            "N" => Some("8".into()),
            _ => None,
        }
    }

    #[test]
    fn forms() {
        assert_eq!(interpolate("${HOME_DIR}/x", &env).unwrap().text, "/h/x");
        assert_eq!(interpolate("${MISSING:-d}", &env).unwrap().text, "d");
        assert_eq!(interpolate("$${HOME_DIR} costs $5", &env).unwrap().text, "${HOME_DIR} costs $5");
        assert!(!interpolate("plain", &env).unwrap().replaced);
        assert!(interpolate("${MISSING}", &env).unwrap_err().contains("not set"));
        assert!(interpolate("${N", &env).unwrap_err().contains("unterminated"));
        assert!(interpolate("${OPENAI_API_KEY:-x}", &env).unwrap_err().contains("secret"));
        assert!(interpolate("${1X}", &env).is_err());
    }

    #[test]
    fn secret_names() {
        assert!(looks_secret("HF_TOKEN"));
        assert!(looks_secret("api_key"));
        assert!(!looks_secret("MONKEY_DIR"));
        assert!(!looks_secret("TEACHER_URL"));
    }
}
