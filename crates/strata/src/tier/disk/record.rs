//! Records of the disk index log, byte by byte (all integers little-endian):
//!
//! ```text
//! frame   := len:u32 crc:u32 payload[len]        crc = crc32c(len bytes ++ payload)
//! payload := kind:u8 body
//! 1 Header  magic:[8]="STRATAIX" version:u32 block_size:u32
//! 2 Object  id:u64 token path_len:u32 path[path_len]
//!           token := 0 size:u64 mtime_ns:i64 ctime_ns:i64 ino:u64
//!                  | 1 size:u64 etag_len:u16 etag[etag_len]      (UTF-8)
//! 3 Add     id:u64 first:u64 count:u32 crc:u32[count]   blocks first.. are on disk
//! 4 Del     id:u64 first:u64 count:u64                  blocks first.. are gone
//! 5 Drop    id:u64                                      the object is gone
//! 6 NextId  next:u64                                    ids below are used up
//! 7 Pin     path_len:u32 path[path_len]                 files at or below the path
//!                                                       are kept out of eviction
//! 8 Unpin   path_len:u32 path[path_len]                 that pin is gone
//! ```
//!
//! A log is a header followed by records. A frame that is cut short or fails its
//! checksum ends the log: everything after it was never acknowledged as durable.

use std::sync::Arc;

use crate::origin::Token;

pub const MAGIC: [u8; 8] = *b"STRATAIX";
pub const VERSION: u32 = 1;
/// Upper bound of a payload; a larger length field is damage, not a record.
pub const MAX_PAYLOAD: u32 = 1 << 20;
/// Most blocks one Add record carries.
pub const MAX_RUN: usize = 16 * 1024;
const FRAME_HEADER: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Header {
        version: u32,
        block_size: u32,
    },
    Object {
        id: u64,
        token: Token,
        path: Vec<u8>,
    },
    Add {
        id: u64,
        first: u64,
        crcs: Vec<u32>,
    },
    Del {
        id: u64,
        first: u64,
        count: u64,
    },
    Drop {
        id: u64,
    },
    NextId {
        next: u64,
    },
    Pin {
        path: Vec<u8>,
    },
    Unpin {
        path: Vec<u8>,
    },
}

/// Why decoding stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the frame needs: a torn or empty tail.
    Incomplete,
    /// The bytes are not a valid record.
    Corrupt(&'static str),
}

pub fn encode(rec: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER]);
    match rec {
        Record::Header {
            version,
            block_size,
        } => {
            out.push(1);
            out.extend_from_slice(&MAGIC);
            out.extend_from_slice(&version.to_le_bytes());
            out.extend_from_slice(&block_size.to_le_bytes());
        }
        Record::Object { id, token, path } => {
            out.push(2);
            out.extend_from_slice(&id.to_le_bytes());
            match token {
                Token::Stat {
                    size,
                    mtime_ns,
                    ctime_ns,
                    ino,
                } => {
                    out.push(0);
                    out.extend_from_slice(&size.to_le_bytes());
                    out.extend_from_slice(&mtime_ns.to_le_bytes());
                    out.extend_from_slice(&ctime_ns.to_le_bytes());
                    out.extend_from_slice(&ino.to_le_bytes());
                }
                Token::Etag { size, etag } => {
                    out.push(1);
                    out.extend_from_slice(&size.to_le_bytes());
                    let e = &etag.as_bytes()[..etag.len().min(u16::MAX as usize)];
                    out.extend_from_slice(&(e.len() as u16).to_le_bytes());
                    out.extend_from_slice(e);
                }
            }
            out.extend_from_slice(&(path.len() as u32).to_le_bytes());
            out.extend_from_slice(path);
        }
        Record::Add { id, first, crcs } => {
            out.push(3);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&first.to_le_bytes());
            out.extend_from_slice(&(crcs.len() as u32).to_le_bytes());
            for c in crcs {
                out.extend_from_slice(&c.to_le_bytes());
            }
        }
        Record::Del { id, first, count } => {
            out.push(4);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&first.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
        }
        Record::Drop { id } => {
            out.push(5);
            out.extend_from_slice(&id.to_le_bytes());
        }
        Record::NextId { next } => {
            out.push(6);
            out.extend_from_slice(&next.to_le_bytes());
        }
        Record::Pin { path } | Record::Unpin { path } => {
            out.push(if matches!(rec, Record::Pin { .. }) {
                7
            } else {
                8
            });
            out.extend_from_slice(&(path.len() as u32).to_le_bytes());
            out.extend_from_slice(path);
        }
    }
    let len = (out.len() - start - FRAME_HEADER) as u32;
    debug_assert!(len <= MAX_PAYLOAD);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&len.to_le_bytes()),
        &out[start + FRAME_HEADER..],
    );
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the record at the start of `buf`; returns it and the bytes it used.
pub fn decode(buf: &[u8]) -> Result<(Record, usize), DecodeError> {
    if buf.len() < FRAME_HEADER {
        return Err(DecodeError::Incomplete);
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_PAYLOAD {
        return Err(DecodeError::Corrupt("bad length"));
    }
    let end = FRAME_HEADER + len as usize;
    if buf.len() < end {
        return Err(DecodeError::Incomplete);
    }
    let payload = &buf[FRAME_HEADER..end];
    if crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), payload) != crc {
        return Err(DecodeError::Corrupt("checksum mismatch"));
    }
    let mut c = Cursor { b: payload };
    let rec = match c.u8()? {
        1 => {
            if c.take(8)? != MAGIC {
                return Err(DecodeError::Corrupt("bad magic"));
            }
            Record::Header {
                version: c.u32()?,
                block_size: c.u32()?,
            }
        }
        2 => {
            let id = c.u64()?;
            let token = match c.u8()? {
                0 => Token::Stat {
                    size: c.u64()?,
                    mtime_ns: c.u64()? as i64,
                    ctime_ns: c.u64()? as i64,
                    ino: c.u64()?,
                },
                1 => {
                    let size = c.u64()?;
                    let n = c.u16()? as usize;
                    let e = std::str::from_utf8(c.take(n)?)
                        .map_err(|_| DecodeError::Corrupt("etag is not UTF-8"))?;
                    Token::Etag {
                        size,
                        etag: Arc::from(e),
                    }
                }
                _ => return Err(DecodeError::Corrupt("unknown token kind")),
            };
            let n = c.u32()? as usize;
            let path = c.take(n)?.to_vec();
            Record::Object { id, token, path }
        }
        3 => {
            let id = c.u64()?;
            let first = c.u64()?;
            let n = c.u32()? as usize;
            if n == 0 || n > MAX_RUN {
                return Err(DecodeError::Corrupt("bad run length"));
            }
            let mut crcs = Vec::with_capacity(n);
            for _ in 0..n {
                crcs.push(c.u32()?);
            }
            if first.checked_add(n as u64).is_none() {
                return Err(DecodeError::Corrupt("run past the end"));
            }
            Record::Add { id, first, crcs }
        }
        4 => {
            let (id, first, count) = (c.u64()?, c.u64()?, c.u64()?);
            if first.checked_add(count).is_none() {
                return Err(DecodeError::Corrupt("run past the end"));
            }
            Record::Del { id, first, count }
        }
        5 => Record::Drop { id: c.u64()? },
        6 => Record::NextId { next: c.u64()? },
        k @ (7 | 8) => {
            let n = c.u32()? as usize;
            let path = c.take(n)?.to_vec();
            if k == 7 {
                Record::Pin { path }
            } else {
                Record::Unpin { path }
            }
        }
        _ => return Err(DecodeError::Corrupt("unknown record kind")),
    };
    if !c.b.is_empty() {
        return Err(DecodeError::Corrupt("trailing bytes"));
    }
    Ok((rec, end))
}

struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(DecodeError::Corrupt("record too short"));
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn token() -> impl Strategy<Value = Token> {
        prop_oneof![
            (any::<u64>(), any::<i64>(), any::<i64>(), any::<u64>()).prop_map(
                |(size, mtime_ns, ctime_ns, ino)| Token::Stat {
                    size,
                    mtime_ns,
                    ctime_ns,
                    ino
                }
            ),
            (any::<u64>(), "[ -~]{0,40}").prop_map(|(size, e)| Token::Etag {
                size,
                etag: Arc::from(e.as_str())
            }),
        ]
    }

    fn record() -> impl Strategy<Value = Record> {
        prop_oneof![
            (any::<u32>(), any::<u32>()).prop_map(|(version, block_size)| Record::Header {
                version,
                block_size
            }),
            (
                any::<u64>(),
                token(),
                proptest::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(id, token, path)| Record::Object { id, token, path }),
            (
                any::<u64>(),
                0u64..1 << 40,
                proptest::collection::vec(any::<u32>(), 1..50)
            )
                .prop_map(|(id, first, crcs)| Record::Add { id, first, crcs }),
            (any::<u64>(), 0u64..1 << 40, 0u64..1 << 40)
                .prop_map(|(id, first, count)| Record::Del { id, first, count }),
            any::<u64>().prop_map(|id| Record::Drop { id }),
            any::<u64>().prop_map(|next| Record::NextId { next }),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(|path| Record::Pin { path }),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(|path| Record::Unpin { path }),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(recs in proptest::collection::vec(record(), 1..20)) {
            let mut buf = Vec::new();
            for r in &recs { encode(r, &mut buf); }
            let mut off = 0;
            for r in &recs {
                let (got, n) = decode(&buf[off..]).unwrap();
                prop_assert_eq!(&got, r);
                off += n;
            }
            prop_assert_eq!(off, buf.len());
        }

        /// Any cut or any flipped bit is reported, never misread and never a panic.
        #[test]
        fn damage_is_detected(rec in record(), cut in any::<usize>(), bit in any::<usize>()) {
            let mut buf = Vec::new();
            encode(&rec, &mut buf);
            let cut = cut % buf.len();
            prop_assert!(decode(&buf[..cut]).is_err());
            let mut flipped = buf.clone();
            let bit = bit % (flipped.len() * 8);
            flipped[bit / 8] ^= 1 << (bit % 8);
            match decode(&flipped) {
                Err(_) => {}
                Ok((r, _)) => prop_assert_eq!(r, rec, "a flip must not decode to another record"),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }
    }
}
