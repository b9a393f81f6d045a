//! What the shared tier stores under a key: the block framed with the key it was
//! stored under, its length and a crc32c, and with a secret a keyed BLAKE3 MAC, so a
//! value that was damaged, stored under another key, truncated or (with the secret)
//! forged by a machine without it is caught on every get and taken for a miss.
//!
//! ```text
//! "SSV1" | flags u8 (1: MAC) | key len u16 | key | data len u32 | crc32c u32 | [MAC 32] | data
//! ```
//! The crc and the MAC cover the key, the length and the data.

use bytes::Bytes;

const MAGIC: &[u8; 4] = b"SSV1";
const FLAG_MAC: u8 = 1;

/// Why a value was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// Not a value of ours, or cut short.
    Malformed,
    /// Stored under another key (a version or block it does not belong to).
    WrongKey,
    /// The bytes do not match their checksum.
    Checksum,
    /// No MAC, or a MAC that does not match the secret.
    Mac,
}

fn crc(key: &str, len: [u8; 4], data: &[u8]) -> u32 {
    let c = crc32c::crc32c(key.as_bytes());
    let c = crc32c::crc32c_append(c, &len);
    crc32c::crc32c_append(c, data)
}

fn mac(secret: &[u8; 32], key: &str, len: [u8; 4], data: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new_keyed(secret);
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key.as_bytes());
    h.update(&len);
    h.update(data);
    h.finalize()
}

/// The value to store `data` under `key`.
pub fn encode(key: &str, data: &[u8], secret: Option<&[u8; 32]>) -> Vec<u8> {
    let len = (data.len() as u32).to_le_bytes();
    let mut v = Vec::with_capacity(4 + 1 + 2 + key.len() + 8 + 32 + data.len());
    v.extend_from_slice(MAGIC);
    v.push(if secret.is_some() { FLAG_MAC } else { 0 });
    v.extend_from_slice(&(key.len() as u16).to_le_bytes());
    v.extend_from_slice(key.as_bytes());
    v.extend_from_slice(&len);
    v.extend_from_slice(&crc(key, len, data).to_le_bytes());
    if let Some(s) = secret {
        v.extend_from_slice(mac(s, key, len, data).as_bytes());
    }
    v.extend_from_slice(data);
    v
}

/// The block in `value` if it is the one stored under `key` (and, with a secret,
/// authenticated by it).
pub fn decode(key: &str, value: Vec<u8>, secret: Option<&[u8; 32]>) -> Result<Bytes, Bad> {
    let take = |at: &mut usize, n: usize| -> Result<std::ops::Range<usize>, Bad> {
        let r = *at..at.checked_add(n).ok_or(Bad::Malformed)?;
        if r.end > value.len() {
            return Err(Bad::Malformed);
        }
        *at = r.end;
        Ok(r)
    };
    let mut at = 0;
    if value[take(&mut at, 4)?] != MAGIC[..] {
        return Err(Bad::Malformed);
    }
    let flags = value[take(&mut at, 1)?][0];
    let klen = u16::from_le_bytes(value[take(&mut at, 2)?].try_into().expect("2 bytes"));
    if value[take(&mut at, klen as usize)?] != *key.as_bytes() {
        return Err(Bad::WrongKey);
    }
    let len: [u8; 4] = value[take(&mut at, 4)?].try_into().expect("4 bytes");
    let sum = u32::from_le_bytes(value[take(&mut at, 4)?].try_into().expect("4 bytes"));
    let tag = if flags & FLAG_MAC != 0 {
        Some(take(&mut at, 32)?)
    } else {
        None
    };
    let data = take(&mut at, u32::from_le_bytes(len) as usize)?;
    if at != value.len() {
        return Err(Bad::Malformed);
    }
    if crc(key, len, &value[data.clone()]) != sum {
        return Err(Bad::Checksum);
    }
    if let Some(s) = secret {
        let tag = tag.ok_or(Bad::Mac)?;
        let want: [u8; 32] = value[tag].try_into().expect("32 bytes");
        // blake3::Hash compares in constant time.
        if mac(s, key, len, &value[data.clone()]) != blake3::Hash::from(want) {
            return Err(Bad::Mac);
        }
    }
    Ok(Bytes::from(value).slice(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_comes_back_only_under_its_key_and_intact() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let v = encode("k1", &data, None);
        assert_eq!(decode("k1", v.clone(), None).unwrap(), data);
        assert_eq!(decode("k2", v.clone(), None), Err(Bad::WrongKey));
        for at in [0, 5, 9, 20, v.len() - 1] {
            let mut bad = v.clone();
            bad[at] ^= 0x40;
            assert!(decode("k1", bad, None).is_err(), "flip at {at}");
        }
        assert_eq!(
            decode("k1", v[..v.len() - 1].to_vec(), None),
            Err(Bad::Malformed)
        );
        assert_eq!(decode("k1", Vec::new(), None), Err(Bad::Malformed));
    }

    #[test]
    fn with_a_secret_only_values_made_with_it_are_taken() {
        let (s, other) = ([7u8; 32], [8u8; 32]);
        let v = encode("k", b"abc", Some(&s));
        assert_eq!(decode("k", v.clone(), Some(&s)).unwrap(), &b"abc"[..]);
        assert_eq!(decode("k", v.clone(), Some(&other)), Err(Bad::Mac));
        // Without the secret the crc still holds it to its key.
        assert_eq!(decode("k", v, None).unwrap(), &b"abc"[..]);
        // A value from a machine without the secret (no MAC), or forged.
        assert_eq!(
            decode("k", encode("k", b"abc", None), Some(&s)),
            Err(Bad::Mac)
        );
        let mut forged = encode("k", b"abd", Some(&other));
        assert_eq!(decode("k", forged.clone(), Some(&s)), Err(Bad::Mac));
        let n = forged.len();
        forged[n - 1] = b'c';
        assert!(decode("k", forged, Some(&s)).is_err());
    }
}
