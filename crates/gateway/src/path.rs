//! The request path as routing sees it: percent-decoded, slashes merged, dot-segments
//! resolved, as nginx normalises `$uri` before matching locations. Without it, `/%61dmin` or
//! `/x/../admin` would slip past the `/admin` route and its allowlist.

use std::borrow::Cow;

/// Why a path cannot be routed (answered with 400, as nginx does).
#[derive(Debug, PartialEq, Eq)]
pub enum BadPath {
    /// `..` above the root.
    AboveRoot,
    /// A `%` not followed by two hex digits, or a decoded byte sequence that is not UTF-8
    /// or holds a NUL.
    BadEncoding,
}

/// The normalised path; borrowed when there is nothing to normalise (the common case).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, BadPath> {
    let clean = !path.contains('%') && !path.contains("//") && !path.contains("/.");
    if clean && path.starts_with('/') {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = percent_decode(path.as_bytes())?;
    let decoded = String::from_utf8(decoded).map_err(|_| BadPath::BadEncoding)?;
    let mut segments: Vec<&str> = Vec::new();
    let ends_with_slash =
        decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(BadPath::AboveRoot);
                }
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || ends_with_slash {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

fn percent_decode(raw: &[u8]) -> Result<Vec<u8>, BadPath> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = raw.get(i + 1..i + 3).ok_or(BadPath::BadEncoding)?;
            // Two hex digits exactly (from_str_radix alone would take a sign).
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(BadPath::BadEncoding);
            }
            let text = std::str::from_utf8(hex).map_err(|_| BadPath::BadEncoding)?;
            let byte = u8::from_str_radix(text, 16).map_err(|_| BadPath::BadEncoding)?;
            if byte == 0 {
                return Err(BadPath::BadEncoding);
            }
            out.push(byte);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_nginx() {
        for (raw, want) in [
            ("/", "/"),
            ("/admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("//admin", "/admin"),
            ("/x/../admin", "/admin"),
            ("/./admin/./x", "/admin/x"),
            ("/a/b/", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a%2Fb", "/a/b"),
            ("/caf%C3%A9", "/café"),
            ("", "/"),
        ] {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "{raw}");
        }
        assert!(matches!(normalize("/plain/path"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn refuses_what_nginx_refuses() {
        assert_eq!(normalize("/.."), Err(BadPath::AboveRoot));
        assert_eq!(normalize("/a/../../b"), Err(BadPath::AboveRoot));
        assert_eq!(normalize("/%2e%2e/x"), Err(BadPath::AboveRoot));
        assert_eq!(normalize("/a%zz"), Err(BadPath::BadEncoding));
        assert_eq!(normalize("/a%4"), Err(BadPath::BadEncoding));
        assert_eq!(normalize("/a%00b"), Err(BadPath::BadEncoding));
        assert_eq!(normalize("/%ff"), Err(BadPath::BadEncoding));
        assert_eq!(normalize("/a%+f"), Err(BadPath::BadEncoding));
    }
}
