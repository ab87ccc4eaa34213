//! Request smuggling guard: an HTTP/1.1 request head with both `Content-Length` and
//! `Transfer-Encoding` is refused with 400, as nginx does. hyper itself frames such a request
//! by `Transfer-Encoding` and drops `Content-Length` before the handler sees it, so the
//! conflict is detected on the bytes as they are read.

/// Scans request heads as they arrive, across reads.
#[derive(Debug, Default)]
pub struct HeadScanner {
    /// Inside a request head (from its first byte to the empty line).
    in_head: bool,
    /// The current line's first bytes, lowercased (enough for the longest name we look for).
    line: [u8; NAME_MAX],
    line_len: usize,
    /// The current line is longer than `NAME_MAX` (no need to look further).
    line_long: bool,
    content_length: bool,
    transfer_encoding: bool,
}

const NAME_MAX: usize = 18;
const CONTENT_LENGTH: &[u8] = b"content-length:";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding:";

impl HeadScanner {
    /// A new request head starts with the next byte.
    pub fn start_head(&mut self) {
        *self = HeadScanner {
            in_head: true,
            ..HeadScanner::default()
        };
    }

    pub fn in_head(&self) -> bool {
        self.in_head
    }

    /// Feeds bytes; returns true when a head that declares both framings ended in them.
    /// Bytes after the end of a head are not looked at (they are its body).
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut conflict = false;
        for &b in bytes {
            if !self.in_head {
                break;
            }
            if b == b'\n' {
                let blank = self.line_len == 0 || (self.line_len == 1 && self.line[0] == b'\r');
                if blank && !self.line_long {
                    conflict |= self.content_length && self.transfer_encoding;
                    self.in_head = false;
                }
                self.line_len = 0;
                self.line_long = false;
                continue;
            }
            if self.line_len < NAME_MAX {
                self.line[self.line_len] = b.to_ascii_lowercase();
                self.line_len += 1;
                let line = &self.line[..self.line_len];
                if line == CONTENT_LENGTH {
                    self.content_length = true;
                } else if line == TRANSFER_ENCODING {
                    self.transfer_encoding = true;
                }
            } else {
                self.line_long = true;
            }
        }
        conflict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> bool {
        let mut s = HeadScanner::default();
        s.start_head();
        chunks.iter().any(|c| s.feed(c))
    }

    #[test]
    fn both_framings_conflict() {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(scan(&[head]));
        // Split anywhere, even inside a name.
        for cut in 1..head.len() {
            assert!(scan(&[&head[..cut], &head[cut..]]), "cut at {cut}");
        }
        assert!(scan(&[
            b"POST / HTTP/1.1\nTRANSFER-ENCODING: chunked\ncontent-length: 1\n\n"
        ]));
    }

    #[test]
    fn one_framing_is_fine() {
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody"
        ]));
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ]));
        // Names only count at the start of a line; the body is not scanned.
        assert!(!scan(&[
            b"GET / HTTP/1.1\r\nX-Note: content-length: 1\r\nContent-Length: 40\r\n\r\n",
            b"Transfer-Encoding: chunked\r\n\r\n",
        ]));
        assert!(!scan(&[
            b"GET / HTTP/1.1\r\nX-Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
    }
}
