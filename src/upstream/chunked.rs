//! Finds where a chunked body ends (RFC 9112 §7.1) without changing it: the
//! raw pool copies the upstream's chunks through as they are and only needs
//! to know when the answer is over, so the socket can serve the next one.

/// Framing that is not chunked coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("broken chunked framing")]
pub struct BadChunk;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex size; `digits` so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// After `;`: a chunk extension, up to CR.
    Extension {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// The framing state of one chunked body.
#[derive(Debug, Clone, Copy)]
pub struct Chunked {
    state: State,
    /// Where, in the bytes last fed, the trailer section began.
    trailer_at: Option<usize>,
}

impl Default for Chunked {
    fn default() -> Chunked {
        Chunked { state: State::Size { size: 0, digits: 0 }, trailer_at: None }
    }
}

impl Chunked {
    /// The body has ended.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether the last chunk (`0`) has been read: what follows is the
    /// trailer section and the final CRLF.
    pub fn in_trailer(&self) -> bool {
        matches!(self.state, State::TrailerStart | State::TrailerLine | State::TrailerLf | State::EndLf | State::Done)
    }

    /// Where, in the bytes of the last [`Chunked::feed`], the trailer
    /// section began (just after the last chunk's line), if it began there.
    pub fn trailer_at(&self) -> Option<usize> {
        self.trailer_at
    }

    /// Consumes the framing in `bytes` up to the end of the body and returns
    /// how many bytes belong to it. `Err` on framing that is not chunked.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, BadChunk> {
        self.trailer_at = None;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                State::Done => return Ok(i),
                State::Data { left } => {
                    let take = (bytes.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 { State::DataCr } else { State::Data { left } };
                    continue;
                }
                State::Size { size, digits } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' if digits < 15 => {
                        let d = (b as char).to_digit(16).ok_or(BadChunk)?;
                        State::Size { size: size * 16 + u64::from(d), digits: digits + 1 }
                    }
                    b';' | b' ' | b'\t' if digits > 0 => State::Extension { size },
                    b'\r' if digits > 0 => State::SizeLf { size },
                    _ => return Err(BadChunk),
                },
                State::Extension { size } => match b {
                    b'\r' => State::SizeLf { size },
                    b'\n' => return Err(BadChunk),
                    _ => State::Extension { size },
                },
                State::SizeLf { size } => match b {
                    b'\n' if size == 0 => {
                        self.trailer_at = Some(i + 1);
                        State::TrailerStart
                    }
                    b'\n' => State::Data { left: size },
                    _ => return Err(BadChunk),
                },
                State::DataCr => {
                    if b == b'\r' {
                        State::DataLf
                    } else {
                        return Err(BadChunk);
                    }
                }
                State::DataLf => {
                    if b == b'\n' {
                        State::Size { size: 0, digits: 0 }
                    } else {
                        return Err(BadChunk);
                    }
                }
                // A bare LF ends a line for some readers and not for others
                // (RFC 9112 §2.2): they would disagree on where the answer
                // ends, and the rest would meet the next call on the socket.
                State::TrailerStart => match b {
                    b'\r' => State::EndLf,
                    b'\n' => return Err(BadChunk),
                    _ => State::TrailerLine,
                },
                State::TrailerLine => match b {
                    b'\r' => State::TrailerLf,
                    b'\n' => return Err(BadChunk),
                    _ => State::TrailerLine,
                },
                State::TrailerLf => {
                    if b == b'\n' {
                        State::TrailerStart
                    } else {
                        return Err(BadChunk);
                    }
                }
                State::EndLf => {
                    if b == b'\n' {
                        State::Done
                    } else {
                        return Err(BadChunk);
                    }
                }
            };
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body: &[u8]) -> Result<usize, BadChunk> {
        let mut c = Chunked::default();
        let n = c.feed(body)?;
        assert!(c.done(), "not done after {:?}", String::from_utf8_lossy(body));
        Ok(n)
    }

    #[test]
    fn the_end_of_a_body_is_found_and_what_follows_is_left() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
        let mut next = body.to_vec();
        next.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(whole(&next), Ok(body.len()));
        let trailer = b"0\r\nx-trailer: 1\r\n\r\n";
        assert_eq!(whole(trailer), Ok(trailer.len()));
    }

    #[test]
    fn any_split_of_the_bytes_gives_the_same_end() {
        let body = b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nt: v\r\n\r\n";
        for cut in 0..body.len() {
            let mut c = Chunked::default();
            let a = c.feed(&body[..cut]).expect("first part");
            assert_eq!(a, cut);
            assert!(!c.done());
            assert_eq!(c.feed(&body[cut..]), Ok(body.len() - cut));
            assert!(c.done(), "split at {cut}");
        }
    }

    #[test]
    fn the_trailer_section_is_found_wherever_the_bytes_are_cut() {
        let body = b"5\r\nhello\r\n0\r\nContent-Length: 99\r\n\r\n";
        let at = b"5\r\nhello\r\n0\r\n".len();
        for cut in 0..body.len() {
            let mut c = Chunked::default();
            let n = c.feed(&body[..cut]).unwrap();
            let first = c.trailer_at();
            assert_eq!(first.is_some(), cut >= at, "cut {cut}");
            let in_trailer = c.in_trailer();
            let m = c.feed(&body[cut..]).unwrap();
            assert_eq!(n + m, body.len());
            assert!(c.done());
            // Found in the piece where it began, once.
            match (first, c.trailer_at()) {
                (Some(i), None) => assert_eq!(i, at),
                (None, Some(i)) => assert_eq!(cut + i, at, "cut {cut}"),
                other => panic!("cut {cut}: {other:?}"),
            }
            assert_eq!(in_trailer, cut >= at);
        }
    }

    #[test]
    fn broken_framing_is_an_error() {
        for bad in [&b"x\r\n"[..], b"\r\n", b"5\nhello", b"2\r\nabX\r\n", b"ffffffffffffffff0\r\n", b"0\r\n\r\r"] {
            assert_eq!(Chunked::default().feed(bad), Err(BadChunk), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
