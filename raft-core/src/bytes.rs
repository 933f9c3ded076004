//! Serde for byte vectors as bytes, not as a sequence of `u8`s: serde's
//! default walks a `Vec<u8>` element by element. With postcard both forms are
//! the same on the wire (a varint length, then the raw bytes), so this only
//! makes encoding and decoding commands and entries a copy.

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

/// Serializes `v` with `serialize_bytes`.
pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v)
}

/// Deserializes bytes (or, from formats without a bytes type, a sequence).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_byte_buf(BytesVisitor)
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(b) = seq.next_element()? {
            out.push(b);
        }
        Ok(out)
    }
}

/// Decodes [`crate::Bytes`]: one allocation, the bytes copied once.
pub(crate) struct SharedVisitor;

impl<'de> Visitor<'de> for SharedVisitor {
    type Value = crate::Bytes;

    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<crate::Bytes, E> {
        Ok(crate::Bytes::from(v))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<crate::Bytes, E> {
        Ok(crate::Bytes::from(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<crate::Bytes, A::Error> {
        BytesVisitor.visit_seq(seq).map(crate::Bytes::from)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Entry, InstallSnapshot, Message};

    #[test]
    fn byte_fields_encode_exactly_like_a_u8_sequence() {
        // The same value as a plain Vec<u8> field would have encoded.
        #[derive(serde::Serialize)]
        enum PlainPayload {
            Command(Vec<u8>),
        }
        #[derive(serde::Serialize)]
        struct Plain {
            index: u64,
            term: u64,
            payload: PlainPayload,
        }
        let command: Vec<u8> = (0..=255u8).chain(0..44).collect();
        let e = Entry {
            index: 7,
            term: 3,
            payload: crate::Payload::Command(command.clone().into()),
        };
        let plain = Plain {
            index: 7,
            term: 3,
            payload: PlainPayload::Command(command),
        };
        let ours = postcard::to_allocvec(&e).unwrap();
        assert_eq!(ours, postcard::to_allocvec(&plain).unwrap());
        assert_eq!(postcard::from_bytes::<Entry>(&ours).unwrap(), e);
        let m = Message::InstallSnapshot(InstallSnapshot {
            term: 1,
            last_included_index: 2,
            last_included_term: 1,
            membership: crate::Membership::with_voters([1, 2, 3]),
        });
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert_eq!(postcard::from_bytes::<Message>(&bytes).unwrap(), m);
    }
}
