//! A postcard encoder that appends straight to a `Vec<u8>`.
//!
//! It writes exactly the bytes of `postcard::to_stdvec` (the tests compare
//! both on every serde shape), so that postcard and [`crate::decode`] read
//! it alike. It exists for speed: postcard builds every varint in a stack
//! buffer and hands it to its flavor as a slice, while this encoder writes
//! each byte in place, with one capacity check per field. Encoding small
//! items is a good share of the caller's time on tiny tasks.
//!
//! Its error also keeps the message of a failing `Serialize` impl, which
//! postcard replaces by "Serde Serialization Error".

use std::any::{Any, TypeId};

use serde::Serialize;
use serde::ser;

/// Why a value could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A sequence or map that does not know its length up front (postcard
    /// writes the length first), such as a `Serialize` impl that calls
    /// `serialize_seq(None)`.
    #[error(
        "a sequence or map does not know its length up front, which postcard needs (serde's `#[serde(flatten)]` and sequences from iterators without an exact size do this); use plain fields, or collect into a Vec or a map first"
    )]
    LengthUnknown,
    /// A `Display` impl failed while a value was encoded with `collect_str`.
    #[error("a Display implementation failed while the value was encoded as a string")]
    Display,
    /// A `Serialize` impl reported an error.
    #[error("{0}")]
    Custom(String),
    /// The encoding outgrew the limit it was given (see
    /// [`encode_limited`]); encoding stopped there.
    #[error("the encoded value takes more than {limit} bytes")]
    TooLarge {
        /// The limit, in bytes of the value's encoding.
        limit: usize,
    },
}

impl ser::Error for EncodeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        EncodeError::Custom(msg.to_string())
    }
}

/// Appends the postcard encoding of `value` to `out`. On error, `out` may
/// hold part of the value: truncate it to its former length.
#[inline]
pub fn encode_into<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), EncodeError> {
    value.serialize(&mut Encoder {
        out,
        end: usize::MAX,
        limit: usize::MAX,
    })
}

/// [`encode_into`], stopping with [`EncodeError::TooLarge`] as soon as the
/// value's encoding is known to take more than `limit` bytes (checked
/// before each byte string and between the elements of sequences, tuples
/// and structs), so an oversized value is never encoded whole.
pub fn encode_limited<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
    limit: usize,
) -> Result<(), EncodeError> {
    let end = out.len().saturating_add(limit);
    value.serialize(&mut Encoder { out, end, limit })
}

/// [`encode_limited`] for a task's result or a shared value: the same
/// bytes, but a `Vec<u8>`, `Vec<f32>` or `Vec<f64>` is written in one copy
/// instead of element by element (postcard writes its length, then each
/// element's bytes: one byte, or four or eight little-endian ones). A
/// 16 MiB `Vec<u8>` result otherwise takes 16 Mi calls of `serialize_u8`.
pub fn encode_value_limited<T: Serialize + 'static>(
    out: &mut Vec<u8>,
    value: &T,
    limit: usize,
) -> Result<(), EncodeError> {
    let end = out.len().saturating_add(limit);
    let mut encoder = Encoder { out, end, limit };
    if let Some(bytes) = as_type::<T, Vec<u8>>(value) {
        return ser::Serializer::serialize_bytes(&mut encoder, bytes);
    }
    if let Some(numbers) = as_type::<T, Vec<f64>>(value) {
        return encoder.plain(numbers, |x: &f64| x.to_le_bytes());
    }
    if let Some(numbers) = as_type::<T, Vec<f32>>(value) {
        return encoder.plain(numbers, |x: &f32| x.to_le_bytes());
    }
    value.serialize(&mut encoder)
}

/// `value` as a `U`, if `T` is `U`. `TypeId::of` of two known types
/// compares to a constant, so for every other type this folds to `None`
/// (a `downcast_ref` alone would ask the value's vtable on every call).
#[inline(always)]
fn as_type<T: 'static, U: 'static>(value: &T) -> Option<&U> {
    if TypeId::of::<T>() == TypeId::of::<U>() {
        (value as &dyn Any).downcast_ref::<U>()
    } else {
        None
    }
}

/// [`encode_limited`] into any [`Output`] (a buffer in shared memory, say).
pub fn encode_limited_to<O: Output, T: Serialize + ?Sized>(
    out: &mut O,
    value: &T,
    limit: usize,
) -> Result<(), EncodeError> {
    let end = out.len().saturating_add(limit);
    value.serialize(&mut Encoder { out, end, limit })
}

/// Where an encoding is written: a `Vec<u8>`, or a buffer of the
/// caller's (which must take every byte, or remember that it could not).
pub trait Output {
    /// Bytes written so far.
    fn len(&self) -> usize;
    /// Whether nothing was written.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Appends one byte.
    fn push(&mut self, byte: u8);
    /// Appends bytes.
    fn extend_from_slice(&mut self, bytes: &[u8]);
    /// Appends a LEB128 varint of at least two bytes.
    #[inline]
    fn varint_long(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.push(value as u8 | 0x80);
            value >>= 7;
        }
        self.push(value as u8);
    }
}

impl Output for Vec<u8> {
    #[inline(always)]
    fn len(&self) -> usize {
        Vec::len(self)
    }

    #[inline(always)]
    fn push(&mut self, byte: u8) {
        Vec::push(self, byte);
    }

    #[inline(always)]
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        Vec::extend_from_slice(self, bytes);
    }

    #[inline]
    fn varint_long(&mut self, mut value: u64) {
        self.reserve(10);
        let len = Vec::len(self);
        let spare = self.spare_capacity_mut();
        let mut n = 0;
        while value >= 0x80 {
            spare[n].write(value as u8 | 0x80);
            value >>= 7;
            n += 1;
        }
        spare[n].write(value as u8);
        // SAFETY: bytes `len .. len + n + 1` were just written, within the
        // 10 reserved (a u64 takes at most 10 varint bytes).
        unsafe { self.set_len(len + n + 1) };
    }
}

/// The postcard encoding of `value`.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_into(&mut out, value)?;
    Ok(out)
}

/// The serde serializer behind [`encode_into`].
pub struct Encoder<'a, O: Output = Vec<u8>> {
    out: &'a mut O,
    /// The length `out` must not exceed.
    end: usize,
    /// The limit that `end` stands for, for the error.
    limit: usize,
}

impl<O: Output> Encoder<'_, O> {
    /// A LEB128 varint: seven bits per byte, low first.
    #[inline(always)]
    fn varint(&mut self, value: u64) {
        if value < 0x80 {
            self.out.push(value as u8);
        } else {
            self.varint_long(value);
        }
    }

    #[inline]
    fn varint_long(&mut self, value: u64) {
        self.out.varint_long(value);
    }

    fn varint_u128(&mut self, mut value: u128) {
        while value >= 0x80 {
            self.out.push(value as u8 | 0x80);
            value >>= 7;
        }
        self.out.push(value as u8);
    }

    #[inline]
    fn length(&mut self, len: usize) {
        self.varint(len as u64);
    }

    /// A sequence of fixed-size numbers, as postcard writes it (its
    /// length, then each element's little-endian bytes), converted through
    /// a small stack buffer: one `extend_from_slice` per 4 KiB.
    fn plain<E, const N: usize>(
        &mut self,
        items: &[E],
        bytes: impl Fn(&E) -> [u8; N],
    ) -> Result<(), EncodeError> {
        self.room(items.len().saturating_mul(N))?;
        self.length(items.len());
        let mut buffer = [0u8; 4096];
        for block in items.chunks(4096 / N) {
            let used = &mut buffer[..block.len() * N];
            for (slot, item) in used.as_chunks_mut::<N>().0.iter_mut().zip(block) {
                *slot = bytes(item);
            }
            self.out.extend_from_slice(used);
        }
        Ok(())
    }

    /// Whether `more` bytes still fit under the limit.
    #[inline(always)]
    fn room(&self, more: usize) -> Result<(), EncodeError> {
        if self.out.len().saturating_add(more) > self.end {
            return Err(EncodeError::TooLarge { limit: self.limit });
        }
        Ok(())
    }
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

impl<'a, O: Output> ser::Serializer for &mut Encoder<'a, O> {
    type Ok = ();
    type Error = EncodeError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    #[inline]
    fn is_human_readable(&self) -> bool {
        false
    }

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<(), EncodeError> {
        self.out.push(u8::from(v));
        Ok(())
    }

    #[inline]
    fn serialize_i8(self, v: i8) -> Result<(), EncodeError> {
        self.out.push(v as u8);
        Ok(())
    }

    #[inline]
    fn serialize_i16(self, v: i16) -> Result<(), EncodeError> {
        self.varint(zigzag(v.into()));
        Ok(())
    }

    #[inline]
    fn serialize_i32(self, v: i32) -> Result<(), EncodeError> {
        self.varint(zigzag(v.into()));
        Ok(())
    }

    #[inline]
    fn serialize_i64(self, v: i64) -> Result<(), EncodeError> {
        self.varint(zigzag(v));
        Ok(())
    }

    fn serialize_i128(self, v: i128) -> Result<(), EncodeError> {
        self.varint_u128(((v << 1) ^ (v >> 127)) as u128);
        Ok(())
    }

    #[inline]
    fn serialize_u8(self, v: u8) -> Result<(), EncodeError> {
        self.out.push(v);
        Ok(())
    }

    #[inline]
    fn serialize_u16(self, v: u16) -> Result<(), EncodeError> {
        self.varint(v.into());
        Ok(())
    }

    #[inline]
    fn serialize_u32(self, v: u32) -> Result<(), EncodeError> {
        self.varint(v.into());
        Ok(())
    }

    #[inline]
    fn serialize_u64(self, v: u64) -> Result<(), EncodeError> {
        self.varint(v);
        Ok(())
    }

    fn serialize_u128(self, v: u128) -> Result<(), EncodeError> {
        self.varint_u128(v);
        Ok(())
    }

    #[inline]
    fn serialize_f32(self, v: f32) -> Result<(), EncodeError> {
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }

    #[inline]
    fn serialize_f64(self, v: f64) -> Result<(), EncodeError> {
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), EncodeError> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }

    #[inline]
    fn serialize_str(self, v: &str) -> Result<(), EncodeError> {
        self.serialize_bytes(v.as_bytes())
    }

    #[inline]
    fn serialize_bytes(self, v: &[u8]) -> Result<(), EncodeError> {
        self.room(v.len())?;
        self.length(v.len());
        self.out.extend_from_slice(v);
        Ok(())
    }

    #[inline]
    fn serialize_none(self) -> Result<(), EncodeError> {
        self.out.push(0);
        Ok(())
    }

    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), EncodeError> {
        self.out.push(1);
        value.serialize(self)
    }

    #[inline]
    fn serialize_unit(self) -> Result<(), EncodeError> {
        Ok(())
    }

    #[inline]
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), EncodeError> {
        Ok(())
    }

    #[inline]
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        variant_index: u32,
        _variant: &'static str,
    ) -> Result<(), EncodeError> {
        self.varint(variant_index.into());
        Ok(())
    }

    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        value.serialize(self)
    }

    #[inline]
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        variant_index: u32,
        _variant: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        self.varint(variant_index.into());
        value.serialize(self)
    }

    #[inline]
    fn serialize_seq(self, len: Option<usize>) -> Result<Self, EncodeError> {
        self.length(len.ok_or(EncodeError::LengthUnknown)?);
        Ok(self)
    }

    #[inline]
    fn serialize_tuple(self, _len: usize) -> Result<Self, EncodeError> {
        Ok(self)
    }

    #[inline]
    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Self, EncodeError> {
        Ok(self)
    }

    #[inline]
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        variant_index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self, EncodeError> {
        self.varint(variant_index.into());
        Ok(self)
    }

    #[inline]
    fn serialize_map(self, len: Option<usize>) -> Result<Self, EncodeError> {
        // A map is its length, then keys and values in turn.
        self.serialize_seq(len)
    }

    #[inline]
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self, EncodeError> {
        Ok(self)
    }

    #[inline]
    fn serialize_struct_variant(
        self,
        name: &'static str,
        variant_index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self, EncodeError> {
        // Written as a tuple variant: the index, then the fields.
        self.serialize_tuple_variant(name, variant_index, variant, len)
    }

    fn collect_str<T: std::fmt::Display + ?Sized>(self, value: &T) -> Result<(), EncodeError> {
        use std::fmt::Write;
        let mut text = String::new();
        write!(text, "{value}").map_err(|_| EncodeError::Display)?;
        self.serialize_str(&text)
    }
}

/// Sequences, tuples, structs and their variants: the elements one after
/// the other (any length or variant index was written when they began).
macro_rules! elements {
    ($($trait:ident :: $method:ident $(($key:ty))?),* $(,)?) => {$(
        impl<O: Output> ser::$trait for &mut Encoder<'_, O> {
            type Ok = ();
            type Error = EncodeError;

            #[inline]
            fn $method<T: Serialize + ?Sized>(
                &mut self,
                $(_key: $key,)?
                value: &T,
            ) -> Result<(), EncodeError> {
                self.room(0)?;
                value.serialize(&mut **self)
            }

            #[inline]
            fn end(self) -> Result<(), EncodeError> {
                Ok(())
            }
        }
    )*};
}

elements! {
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
    SerializeStruct::serialize_field(&'static str),
    SerializeStructVariant::serialize_field(&'static str),
}

impl<O: Output> ser::SerializeMap for &mut Encoder<'_, O> {
    type Ok = ();
    type Error = EncodeError;

    #[inline]
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), EncodeError> {
        self.room(0)?;
        key.serialize(&mut **self)
    }

    #[inline]
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        value.serialize(&mut **self)
    }

    #[inline]
    fn end(self) -> Result<(), EncodeError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::{Serialize, Serializer};

    use super::*;
    use crate::serde_shapes::{Bytes, Everything, everything};

    /// Both encoders agree on `value`, byte for byte.
    fn same<T: Serialize + std::fmt::Debug>(value: &T) {
        let ours = to_vec(value).expect("our encoder");
        let theirs = postcard::to_stdvec(value).expect("postcard");
        assert_eq!(ours, theirs, "{value:?}");
    }

    /// A value written through `collect_str`.
    #[derive(Debug)]
    struct Shown(u64);

    impl Serialize for Shown {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(&format_args!("#{}", self.0))
        }
    }

    #[test]
    fn edge_values_encode_like_postcard() {
        for v in [
            0u64,
            1,
            127,
            128,
            255,
            16_383,
            16_384,
            u32::MAX.into(),
            u64::MAX,
        ] {
            same(&v);
            same(&(v as u16));
            same(&(v as u32));
            same(&(v as u128 * 3));
        }
        for v in [
            0i64,
            -1,
            1,
            -64,
            64,
            -65,
            i32::MIN.into(),
            i64::MIN,
            i64::MAX,
        ] {
            same(&v);
            same(&(v as i8));
            same(&(v as i16));
            same(&(v as i32));
            same(&(i128::from(v) * 5));
        }
        same(&i128::MIN);
        same(&u128::MAX);
        same(&(f32::NAN.to_bits(), -0.0f64, f64::INFINITY, 1.5f32));
        for c in ['a', 'é', '€', '😀'] {
            same(&c);
        }
        same(&Bytes(vec![]));
        same(&Bytes((0..=255).collect()));
        same(&Bytes(vec![7; 300]));
        same(&Shown(12_345));
        same(&"x".repeat(200));
    }

    #[test]
    fn every_serde_shape_encodes_like_postcard() {
        let nested = everything(2);
        same(&nested);
        let bytes = to_vec(&nested).expect("encode");
        let back: Everything = postcard::from_bytes(&bytes).expect("postcard decodes it");
        assert_eq!(back, nested);
    }

    #[test]
    fn unknown_lengths_and_custom_errors_are_reported() {
        struct Unsized;
        impl Serialize for Unsized {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_seq(None)?;
                unreachable!("postcard needs the length")
            }
        }
        struct Refuses;
        impl Serialize for Refuses {
            fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("the file handle cannot be sent"))
            }
        }
        assert_eq!(to_vec(&Unsized), Err(EncodeError::LengthUnknown));
        let err = to_vec(&Refuses).expect_err("refused");
        assert_eq!(err.to_string(), "the file handle cannot be sent");
    }

    /// `value` through [`encode_value_limited`]: postcard's bytes exactly.
    fn same_value<T: Serialize + std::fmt::Debug + 'static>(value: &T) {
        let mut ours = vec![9];
        encode_value_limited(&mut ours, value, usize::MAX).expect("encodes");
        let theirs = postcard::to_stdvec(value).expect("postcard");
        assert_eq!(ours[1..], theirs[..], "{}", std::any::type_name::<T>());
    }

    #[test]
    fn byte_and_number_vectors_take_one_copy_and_encode_like_postcard() {
        let specials = [
            0.0,
            -0.0,
            f64::NAN,
            -f64::NAN,
            f64::from_bits(0x7ff0_0000_0000_0001),
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE / 2.0,
            f64::MAX,
            1.5,
        ];
        // Lengths around the 4 KiB conversion block of each element size.
        for len in [
            0, 1, 2, 511, 512, 513, 1023, 1024, 1025, 4095, 4096, 4097, 20_000,
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let doubles: Vec<f64> = (0..len)
                .map(|i| specials[i % specials.len()] * (i as f64))
                .collect();
            let singles: Vec<f32> = doubles.iter().map(|&x| x as f32).collect();
            same_value(&bytes);
            same_value(&doubles);
            same_value(&singles);
        }
        // Other types take serde's path, unchanged.
        same_value(&(vec![1u8, 2], vec![0.5f64]));
        same_value(&vec![300u32, 1]);
        same_value(&everything(3));
    }

    #[test]
    fn byte_and_number_vectors_over_the_limit_fail_like_any_value() {
        for limit in [0, 1, 99, 100, 101, 799, 800, 801] {
            let bytes = vec![1u8; 100];
            let doubles = vec![1.0f64; 100];
            let singles = vec![1.0f32; 200];
            // Failing means the encoding is over the limit (the length
            // prefix is not counted, as for any byte string: the caller
            // measures the size afterwards); else postcard's bytes.
            fn both<T: Serialize + 'static>(value: &T, limit: usize) {
                let theirs = postcard::to_stdvec(value).expect("postcard");
                let mut ours = Vec::new();
                match encode_value_limited(&mut ours, value, limit) {
                    Err(err) => {
                        assert!(
                            theirs.len() > limit,
                            "{} bytes failed under limit {limit}",
                            theirs.len()
                        );
                        assert_eq!(err, EncodeError::TooLarge { limit });
                    }
                    Ok(()) => {
                        assert!(
                            theirs.len() <= limit + 2,
                            "{} bytes passed limit {limit}",
                            theirs.len()
                        );
                        assert_eq!(ours, theirs, "limit {limit}");
                    }
                }
            }
            both(&bytes, limit);
            both(&doubles, limit);
            both(&singles, limit);
        }
    }

    proptest! {
        #[test]
        fn random_values_encode_like_postcard(
            a: u64, b: i64, c: u32, d: i16, e: u128, f: i128, g: f64, s: String,
            v: Vec<(u16, i32)>, o: Option<char>, bytes: Vec<u8>,
        ) {
            same(&(a, b, c, d, e, f, g, &s, &v, o));
            same_value(&bytes);
            same(&Bytes(bytes));
        }
    }
}
