//! Values of every serde shape, shared by the tests of the encoder and the
//! decoder (both compared with postcard on them).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Unit;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Newtype(pub(crate) i32);

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Pair(pub(crate) u8, pub(crate) String);

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) enum Shape {
    Empty,
    Circle(f64),
    Rect(u32, u32),
    Named { label: String, sides: Option<u16> },
}

/// A byte buffer through `serialize_bytes` / `deserialize_byte_buf`.
#[derive(Debug, PartialEq)]
pub(crate) struct Bytes(pub(crate) Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Everything {
    flag: bool,
    small: (i8, u8, i16, u16),
    mid: (i32, u32, f32),
    wide: (i64, u64, f64),
    huge: (i128, u128),
    letter: char,
    text: String,
    bytes: Bytes,
    list: Vec<u64>,
    map: BTreeMap<String, i64>,
    nothing: (),
    unit: Unit,
    newtype: Newtype,
    pair: Pair,
    shapes: Vec<Shape>,
    maybe: Option<Box<Everything>>,
}

/// Every shape, with edge values, nested `depth` levels deep.
pub(crate) fn everything(depth: u32) -> Everything {
    Everything {
        flag: depth.is_multiple_of(2),
        small: (-128, 255, i16::MIN, u16::MAX),
        mid: (i32::MIN, u32::MAX, f32::MIN_POSITIVE),
        wide: (i64::MIN, u64::MAX, -0.0),
        huge: (i128::MIN, u128::MAX),
        letter: '𝄞',
        text: "naïve ✓".into(),
        bytes: Bytes(vec![0, 1, 0x80, 0xff]),
        list: vec![0, 127, 128, 16_384, u64::MAX],
        map: [("a".to_owned(), -1), ("b".to_owned(), i64::MAX)].into(),
        nothing: (),
        unit: Unit,
        newtype: Newtype(-5),
        pair: Pair(7, String::new()),
        shapes: vec![
            Shape::Empty,
            Shape::Circle(1.5),
            Shape::Rect(3, 1 << 20),
            Shape::Named {
                label: "tri".into(),
                sides: Some(3),
            },
            Shape::Named {
                label: String::new(),
                sides: None,
            },
        ],
        maybe: (depth > 0).then(|| Box::new(everything(depth - 1))),
    }
}
