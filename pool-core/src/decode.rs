//! A postcard decoder that reads straight from a byte slice.
//!
//! It accepts exactly what `postcard::from_bytes` accepts and decodes it to
//! the same values (the tests compare both on every serde shape and on
//! random bytes, errors included), so it reads what [`crate::encode`] and
//! postcard write.
//!
//! Why it stays, on evidence: its errors say what went wrong. A failing
//! `Deserialize` impl's own message reaches the user (postcard replaces it
//! by "Serde Deserialization Error"), and a type that needs a
//! self-describing format (`#[serde(untagged)]`, `deserialize_any`) is
//! named as such; `tests/faults.rs` checks both through real workers. It
//! was also written for speed (one-byte varints read inline), but
//! BENCHMARKS.md measured that gain as noise next to postcard's own
//! decoder, so speed is not a reason to keep it.

use std::any::{Any, TypeId};

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

/// Why bytes could not be decoded as a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes ended in the middle of the value.
    #[error("the encoded value ends early (a field is missing or truncated)")]
    End,
    /// An integer or length is longer than its type allows.
    #[error("an encoded integer or length is out of range for its type")]
    BadVarint,
    /// A `bool` byte other than 0 or 1.
    #[error("an encoded bool is neither 0 nor 1")]
    BadBool,
    /// An `Option` tag other than 0 or 1.
    #[error("an encoded Option tag is neither 0 (None) nor 1 (Some)")]
    BadOption,
    /// A `char` that is not one UTF-8 encoded character.
    #[error("an encoded char is not a UTF-8 character")]
    BadChar,
    /// A string that is not UTF-8.
    #[error("an encoded string is not UTF-8")]
    BadUtf8,
    /// A type that needs a self-describing format (`deserialize_any`,
    /// identifiers, ignored fields): postcard writes no field names or
    /// type tags.
    #[error(
        "this type needs a self-describing format (serde's `deserialize_any`, as used by untagged or internally tagged enums and `#[serde(flatten)]`), which postcard is not"
    )]
    NotSelfDescribing,
    /// A `Deserialize` impl reported an error.
    #[error("{0}")]
    Custom(String),
}

impl de::Error for DecodeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        DecodeError::Custom(msg.to_string())
    }
}

/// Decodes a `T` from the start of `bytes` (bytes after it are ignored, as
/// `postcard::from_bytes` does).
#[inline]
pub fn from_bytes<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, DecodeError> {
    T::deserialize(&mut Decoder { input: bytes })
}

/// [`from_bytes`] for a task's result: the same value, but a `Vec<u8>`,
/// `Vec<f32>` or `Vec<f64>` is read in one pass over its bytes instead of
/// element by element (see [`crate::encode::encode_value_limited`]).
pub fn value_from_bytes<T: de::DeserializeOwned + 'static>(bytes: &[u8]) -> Result<T, DecodeError> {
    let mut decoder = Decoder { input: bytes };
    let id = TypeId::of::<T>();
    let fast = if id == TypeId::of::<Vec<u8>>() {
        let len = decoder.length()?;
        cast(decoder.take(len)?.to_vec())
    } else if id == TypeId::of::<Vec<f64>>() {
        cast(decoder.plain(f64::from_le_bytes)?)
    } else if id == TypeId::of::<Vec<f32>>() {
        cast(decoder.plain(f32::from_le_bytes)?)
    } else {
        None
    };
    match fast {
        Some(value) => Ok(value),
        None => from_bytes(bytes),
    }
}

/// How many bytes beyond its value a buffer taken by
/// [`bytes_value_in_place`] may hold (a frame's headers take a few dozen).
pub const IN_PLACE_SLACK: usize = 4096;

/// A result of type `T` encoded in `buf[at..at + len]`, taken out of `buf`
/// itself when `T` is `Vec<u8>`: its bytes are moved to the front of `buf`,
/// which is cut to them and becomes the value. No new allocation, no fresh
/// pages written (for a large result, the costly part of a copy). `Err`
/// gives `buf` back, unchanged, for any other `T`, when the bytes are not
/// exactly one byte string (decode them as usual then), or when `buf`
/// holds more than [`IN_PLACE_SLACK`] bytes beyond the value (a buffer
/// shared by several frames, say): the value would keep them all alive.
pub fn bytes_value_in_place<T: 'static>(
    mut buf: Vec<u8>,
    at: usize,
    len: usize,
) -> Result<T, Vec<u8>> {
    if TypeId::of::<T>() != TypeId::of::<Vec<u8>>()
        || buf.capacity() > len.saturating_add(IN_PLACE_SLACK)
    {
        return Err(buf);
    }
    let Some(value) = at.checked_add(len).and_then(|end| buf.get(at..end)) else {
        return Err(buf);
    };
    let mut decoder = Decoder { input: value };
    let Ok(n) = decoder.length() else {
        return Err(buf);
    };
    if decoder.input.len() != n {
        return Err(buf);
    }
    let start = at + (len - n);
    buf.copy_within(start..start + n, 0);
    buf.truncate(n);
    // `T` is `Vec<u8>` (checked above): the cast cannot fail.
    cast(buf).ok_or_else(Vec::new)
}

/// `value` as a `T`, if it is one.
fn cast<T: 'static, U: 'static>(value: U) -> Option<T> {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<T>>()
        .and_then(Option::take)
}

/// The serde deserializer behind [`from_bytes`].
pub struct Decoder<'de> {
    input: &'de [u8],
}

/// The bits of the integer types read as varints.
const U16: u32 = 16;
const U32: u32 = 32;
const U64: u32 = 64;

impl<'de> Decoder<'de> {
    #[inline(always)]
    fn pop(&mut self) -> Result<u8, DecodeError> {
        let (&byte, rest) = self.input.split_first().ok_or(DecodeError::End)?;
        self.input = rest;
        Ok(byte)
    }

    #[inline(always)]
    fn take(&mut self, n: usize) -> Result<&'de [u8], DecodeError> {
        if self.input.len() < n {
            return Err(DecodeError::End);
        }
        let (head, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(head)
    }

    /// A LEB128 varint of an integer of `BITS` bits (at most 64), as
    /// postcard reads it: at most `ceil(BITS / 7)` bytes, the last of which
    /// may not carry bits above the type's width.
    #[inline(always)]
    fn varint<const BITS: u32>(&mut self) -> Result<u64, DecodeError> {
        let max = BITS.div_ceil(7) as usize;
        let last_max = (1u64 << (BITS - 7 * (max as u32 - 1))) - 1;
        let input = self.input;
        let n = input.len().min(max);
        let mut out = 0u64;
        for (i, &byte) in input[..n].iter().enumerate() {
            out |= u64::from(byte & 0x7F) << (7 * i);
            if byte < 0x80 {
                if i == max - 1 && u64::from(byte) > last_max {
                    return Err(DecodeError::BadVarint);
                }
                self.input = &input[i + 1..];
                return Ok(out);
            }
        }
        Err(if n == max {
            DecodeError::BadVarint
        } else {
            DecodeError::End
        })
    }

    fn varint_u128(&mut self) -> Result<u128, DecodeError> {
        // 19 bytes of 7 bits; the last may carry 2 (128 - 18 × 7).
        let mut out = 0u128;
        for i in 0..19 {
            let byte = self.pop()?;
            out |= u128::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                if i == 18 && byte > 0b11 {
                    return Err(DecodeError::BadVarint);
                }
                return Ok(out);
            }
        }
        Err(DecodeError::BadVarint)
    }

    /// A sequence of fixed-size little-endian numbers, as postcard
    /// writes it (its length, then each element's bytes).
    fn plain<E, const N: usize>(&mut self, from: fn([u8; N]) -> E) -> Result<Vec<E>, DecodeError> {
        let len = self.length()?;
        let bytes = self.take(len.checked_mul(N).ok_or(DecodeError::End)?)?;
        Ok(bytes.as_chunks::<N>().0.iter().map(|&b| from(b)).collect())
    }

    /// A length: a varint of `usize`'s width, as postcard reads it.
    #[inline(always)]
    fn length(&mut self) -> Result<usize, DecodeError> {
        Ok(self.varint::<{ usize::BITS }>()? as usize)
    }
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

/// The elements of a sequence, tuple or struct, or the entries of a map.
struct Elements<'a, 'de> {
    de: &'a mut Decoder<'de>,
    len: usize,
}

impl<'de> de::SeqAccess<'de> for Elements<'_, 'de> {
    type Error = DecodeError;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DecodeError> {
        if self.len == 0 {
            return Ok(None);
        }
        self.len -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        // A length beyond the bytes left is a lie: no hint, so nothing
        // allocates for it.
        (self.len <= self.de.input.len()).then_some(self.len)
    }
}

impl<'de> de::MapAccess<'de> for Elements<'_, 'de> {
    type Error = DecodeError;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DecodeError> {
        if self.len == 0 {
            return Ok(None);
        }
        self.len -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    #[inline]
    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DecodeError> {
        seed.deserialize(&mut *self.de)
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        (self.len <= self.de.input.len()).then_some(self.len)
    }
}

impl<'de> de::Deserializer<'de> for &mut Decoder<'de> {
    type Error = DecodeError;

    #[inline]
    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, DecodeError> {
        Err(DecodeError::NotSelfDescribing)
    }

    #[inline]
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.pop()? {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            _ => Err(DecodeError::BadBool),
        }
    }

    #[inline]
    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_i8(self.pop()? as i8)
    }

    #[inline]
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_i16(unzigzag(self.varint::<U16>()?) as i16)
    }

    #[inline]
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_i32(unzigzag(self.varint::<U32>()?) as i32)
    }

    #[inline]
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_i64(unzigzag(self.varint::<U64>()?))
    }

    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let n = self.varint_u128()?;
        visitor.visit_i128(((n >> 1) as i128) ^ -((n & 1) as i128))
    }

    #[inline]
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_u8(self.pop()?)
    }

    #[inline]
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_u16(self.varint::<U16>()? as u16)
    }

    #[inline]
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_u32(self.varint::<U32>()? as u32)
    }

    #[inline]
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_u64(self.varint::<U64>()?)
    }

    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_u128(self.varint_u128()?)
    }

    #[inline]
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let b = self.take(4)?;
        visitor.visit_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    #[inline]
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let b = self.take(8)?;
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(b);
        visitor.visit_f64(f64::from_le_bytes(bytes))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let len = self.length()?;
        if len > 4 {
            return Err(DecodeError::BadChar);
        }
        let bytes = self.take(len)?;
        let c = std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.chars().next())
            .ok_or(DecodeError::BadChar)?;
        visitor.visit_char(c)
    }

    #[inline]
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let len = self.length()?;
        let bytes = self.take(len)?;
        visitor.visit_borrowed_str(std::str::from_utf8(bytes).map_err(|_| DecodeError::BadUtf8)?)
    }

    #[inline]
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        // Not borrowed, as postcard has it.
        let len = self.length()?;
        let bytes = self.take(len)?;
        visitor.visit_str(std::str::from_utf8(bytes).map_err(|_| DecodeError::BadUtf8)?)
    }

    #[inline]
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let len = self.length()?;
        visitor.visit_borrowed_bytes(self.take(len)?)
    }

    #[inline]
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        // Not borrowed, as postcard has it.
        let len = self.length()?;
        visitor.visit_bytes(self.take(len)?)
    }

    #[inline]
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.pop()? {
            0 => visitor.visit_none(),
            1 => visitor.visit_some(self),
            _ => Err(DecodeError::BadOption),
        }
    }

    #[inline]
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }

    #[inline]
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }

    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_newtype_struct(self)
    }

    #[inline]
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let len = self.length()?;
        visitor.visit_seq(Elements { de: self, len })
    }

    #[inline]
    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_seq(Elements { de: self, len })
    }

    #[inline]
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_tuple(len, visitor)
    }

    #[inline]
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let len = self.length()?;
        visitor.visit_map(Elements { de: self, len })
    }

    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_tuple(fields.len(), visitor)
    }

    #[inline]
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_enum(self)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, DecodeError> {
        Err(DecodeError::NotSelfDescribing)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, DecodeError> {
        Err(DecodeError::NotSelfDescribing)
    }
}

impl<'de> de::EnumAccess<'de> for &mut Decoder<'de> {
    type Error = DecodeError;
    type Variant = Self;

    #[inline]
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self), DecodeError> {
        let index = self.varint::<U32>()? as u32;
        let value = seed.deserialize(IntoDeserializer::<DecodeError>::into_deserializer(index))?;
        Ok((value, self))
    }
}

impl<'de> de::VariantAccess<'de> for &mut Decoder<'de> {
    type Error = DecodeError;

    #[inline]
    fn unit_variant(self) -> Result<(), DecodeError> {
        Ok(())
    }

    #[inline]
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, DecodeError> {
        seed.deserialize(self)
    }

    #[inline]
    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        de::Deserializer::deserialize_tuple(self, fields.len(), visitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::serde_shapes::{Shape, everything};

    /// Both decoders agree on `bytes`: the same value, or both fail.
    fn same<T: DeserializeOwned + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
        let ours = from_bytes::<T>(bytes);
        let theirs = postcard::from_bytes::<T>(bytes);
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{bytes:?}"),
            (Err(_), Err(_)) => {}
            _ => panic!(
                "{bytes:?} as {}: ours {ours:?}, postcard {theirs:?}",
                std::any::type_name::<T>()
            ),
        }
    }

    /// `value` comes back from its encoding, through both decoders alike.
    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
        let bytes = postcard::to_stdvec(value).expect("postcard encodes it");
        assert_eq!(&from_bytes::<T>(&bytes).expect("decodes"), value);
        same::<T>(&bytes);
        // Every truncation fails alike (or decodes alike, for a value
        // that needs fewer bytes).
        for end in 0..bytes.len() {
            same::<T>(&bytes[..end]);
        }
    }

    /// A `Vec<u8>` value inside a larger buffer comes back as that buffer,
    /// cut to the value's bytes; anything else gives the buffer back
    /// unchanged.
    #[test]
    fn a_byte_string_is_taken_in_place_and_anything_else_is_given_back() {
        for n in [0usize, 1, 127, 128, 300, 70_000] {
            let data: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            let value = postcard::to_stdvec(&data).expect("encodes");
            let mut buf = vec![0xEE; 9];
            buf.extend_from_slice(&value);
            let sent = buf.clone();
            let (at, capacity) = (sent.as_ptr(), sent.capacity());
            let got = bytes_value_in_place::<Vec<u8>>(sent, 9, value.len())
                .unwrap_or_else(|_| panic!("{n} bytes taken in place"));
            assert!(got == data, "{n} bytes");
            assert_eq!(
                (got.as_ptr(), got.capacity()),
                (at, capacity),
                "the same allocation"
            );
            // Another type, a value with a byte after it, a cut value, a
            // range out of the buffer: `buf` comes back as it was.
            let back = |r: Result<Vec<u32>, Vec<u8>>| r.expect_err("given back");
            assert!(
                back(bytes_value_in_place::<Vec<u32>>(
                    buf.clone(),
                    9,
                    value.len()
                )) == buf
            );
            let mut longer = buf.clone();
            longer.push(0);
            let back = |r: Result<Vec<u8>, Vec<u8>>| r.expect_err("given back");
            assert!(
                back(bytes_value_in_place::<Vec<u8>>(
                    longer.clone(),
                    9,
                    value.len() + 1
                )) == longer
            );
            if !value.is_empty() {
                let cut = value.len() - 1;
                assert!(back(bytes_value_in_place::<Vec<u8>>(buf.clone(), 9, cut)) == buf);
            }
            assert!(
                back(bytes_value_in_place::<Vec<u8>>(
                    buf.clone(),
                    10,
                    value.len()
                )) == buf
            );
            assert!(back(bytes_value_in_place::<Vec<u8>>(buf.clone(), usize::MAX, 2)) == buf);
            // A buffer holding much more than the value (several frames
            // read at once) is not kept alive by it.
            let mut roomy = Vec::with_capacity(value.len() + 9 + IN_PLACE_SLACK + 1);
            roomy.extend_from_slice(&buf);
            let given = back(bytes_value_in_place::<Vec<u8>>(roomy, 9, value.len()));
            assert!(given == buf);
            let mut snug = Vec::with_capacity(value.len() + IN_PLACE_SLACK);
            snug.extend_from_slice(&buf);
            assert!(bytes_value_in_place::<Vec<u8>>(snug, 9, value.len()).is_ok_and(|v| v == data));
        }
    }

    #[test]
    fn every_serde_shape_decodes_like_postcard() {
        round_trip(&everything(2));
        for v in [
            0u64,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            round_trip(&v);
            round_trip(&(v as u32, v as u16, v as i64, v as i32, v as i16));
        }
        round_trip(&(f64::NAN.to_bits(), f32::INFINITY));
    }

    #[test]
    fn malformed_bytes_fail_like_postcard() {
        // Varints one byte too long, or carrying bits above the type.
        same::<u16>(&[0xff, 0xff, 0x03]);
        same::<u16>(&[0xff, 0xff, 0x04]);
        same::<u32>(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        same::<u32>(&[0xff, 0xff, 0xff, 0xff, 0x10]);
        same::<u64>(&[0xff; 9].iter().copied().chain([0x01]).collect::<Vec<_>>());
        same::<u64>(&[0xff; 9].iter().copied().chain([0x02]).collect::<Vec<_>>());
        same::<u64>(&[0xff; 11]);
        same::<u128>(&[0xff; 18].iter().copied().chain([0x03]).collect::<Vec<_>>());
        same::<u128>(&[0xff; 18].iter().copied().chain([0x04]).collect::<Vec<_>>());
        // Non-canonical but accepted.
        same::<u64>(&[0x80, 0x00]);
        // Bad tags and text.
        same::<bool>(&[2]);
        same::<Option<u8>>(&[2, 0]);
        same::<char>(&[5, b'a', b'b', b'c', b'd', b'e']);
        same::<char>(&[1, 0xff]);
        same::<char>(&[0]);
        same::<String>(&[2, 0xc3, 0x28]);
        same::<Shape>(&[9]);
        // A length far beyond the bytes: an error, not an allocation.
        same::<Vec<u64>>(&[0xff, 0xff, 0xff, 0xff, 0x0f, 1]);
        same::<BTreeMap<u8, u8>>(&[0xff, 0xff, 0xff, 0xff, 0x0f, 1]);
        // Trailing bytes are ignored.
        same::<u8>(&[1, 2, 3]);
    }

    #[test]
    fn errors_say_what_went_wrong() {
        assert_eq!(from_bytes::<u64>(&[]), Err(DecodeError::End));
        assert_eq!(from_bytes::<bool>(&[7]), Err(DecodeError::BadBool));
        #[derive(Debug, Deserialize)]
        #[serde(untagged)]
        #[allow(dead_code)]
        enum Untagged {
            _A(u8),
        }
        let err = from_bytes::<Untagged>(&[1]).expect_err("needs deserialize_any");
        assert_eq!(err, DecodeError::NotSelfDescribing);
        // A Deserialize impl's own message is kept.
        let err = from_bytes::<std::num::NonZeroU32>(&[0]).expect_err("zero");
        assert!(err.to_string().contains("nonzero"), "{err}");
    }

    /// [`value_from_bytes`] and [`from_bytes`] agree on `bytes`: the same
    /// value bit for bit (NaNs included), or the same error.
    fn same_value<T, B>(bytes: &[u8], bits: impl Fn(&T) -> B)
    where
        T: DeserializeOwned + 'static,
        B: PartialEq + std::fmt::Debug,
    {
        let fast = value_from_bytes::<T>(bytes);
        let slow = from_bytes::<T>(bytes);
        match (&fast, &slow) {
            (Ok(a), Ok(b)) => assert_eq!(bits(a), bits(b), "{bytes:?}"),
            (Err(a), Err(b)) => assert_eq!(a, b, "{bytes:?}"),
            _ => panic!(
                "{bytes:?} as {}: one decoder failed, the other did not",
                std::any::type_name::<T>()
            ),
        }
    }

    /// All three fast shapes agree with serde's path on `bytes`.
    fn same_vectors(bytes: &[u8]) {
        same_value::<Vec<u8>, _>(bytes, Clone::clone);
        same_value::<Vec<f64>, _>(bytes, |v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
        same_value::<Vec<f32>, _>(bytes, |v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    }

    #[test]
    fn byte_and_number_vectors_decode_in_one_pass_like_serde() {
        let doubles = [
            0.0,
            -0.0,
            f64::NAN,
            f64::from_bits(0x7ff0_0000_0000_0001),
            f64::INFINITY,
            2.5,
        ];
        for len in [0usize, 1, 2, 127, 128, 1000] {
            let d: Vec<f64> = (0..len)
                .map(|i| doubles[i % doubles.len()] + i as f64)
                .collect();
            let s: Vec<f32> = d.iter().map(|&x| x as f32).collect();
            let b: Vec<u8> = (0..len).map(|i| i as u8).collect();
            for bytes in [
                postcard::to_stdvec(&d).expect("encodes"),
                postcard::to_stdvec(&s).expect("encodes"),
                postcard::to_stdvec(&b).expect("encodes"),
            ] {
                same_vectors(&bytes);
                // Every truncation fails (or decodes) alike.
                for end in 0..bytes.len().min(40) {
                    same_vectors(&bytes[..end]);
                }
                same_vectors(&bytes[..bytes.len() - 1]);
            }
            let back: Vec<f64> =
                value_from_bytes(&postcard::to_stdvec(&d).expect("encodes")).expect("decodes");
            assert_eq!(
                back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                d.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
        // A length that overflows when multiplied by the element size.
        let mut huge = Vec::new();
        crate::encode::encode_into(&mut huge, &(usize::MAX / 4 + 1)).expect("encodes");
        same_vectors(&huge);
        // Other types take serde's path.
        let pair = postcard::to_stdvec(&(vec![1u8], 2.0f64)).expect("encodes");
        assert_eq!(
            value_from_bytes::<(Vec<u8>, f64)>(&pair),
            Ok((vec![1u8], 2.0))
        );
    }

    proptest! {
        #[test]
        fn random_bytes_decode_like_postcard(bytes: Vec<u8>) {
            same::<(u64, u32)>(&bytes);
            same::<(i64, i16, u16)>(&bytes);
            same::<(u128, i128)>(&bytes);
            same::<(bool, Option<char>, f64)>(&bytes);
            same::<(String, Vec<u32>)>(&bytes);
            same::<Vec<Shape>>(&bytes);
            same::<BTreeMap<String, Option<i8>>>(&bytes);
            same_vectors(&bytes);
        }

        #[test]
        fn random_values_decode_like_postcard(
            a: u64, b: i64, c: u32, d: i16, e: u128, f: i128, g: f64, s: String,
            v: Vec<(u16, i32)>, o: Option<char>,
        ) {
            let value = (a, b, c, d, e, f, g.to_bits(), s, v, o);
            round_trip(&value);
        }
    }
}
