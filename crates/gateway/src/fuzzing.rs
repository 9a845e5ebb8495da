//! Entry points for the fuzz targets (`fuzz/`, libFuzzer through cargo-fuzz) and the property
//! tests: each takes arbitrary bytes, drives one parser of bytes from the wire, and panics only
//! when a guarantee is broken (a parser must itself never panic, never read past its limits,
//! and end the same way whether its input comes whole or in pieces).

use bytes::BytesMut;
use runtime::{DataType, TensorSpec};

use crate::{h1, protocol, server};

/// Cut points for feeding `data` in pieces, taken from its first byte.
fn pieces(data: &[u8]) -> (usize, &[u8]) {
    match data.split_first() {
        Some((step, rest)) => (usize::from(*step % 64) + 1, rest),
        None => (1, data),
    }
}

/// The request-head scanner, fed `data` in pieces: never panics, never holds more than the
/// head limit plus one read.
pub fn head(data: &[u8]) {
    let (step, data) = pieces(data);
    let mut scan = server::HeadScanProbe::default();
    let mut buf = BytesMut::new();
    for piece in data.chunks(step) {
        buf.extend_from_slice(piece);
        if scan.poll(&mut buf) {
            return;
        }
        assert!(
            buf.len() <= h1::MAX_HEAD + 64,
            "the head buffer grew past its bound"
        );
    }
}

/// The chunked decoder, fed `data` whole and in pieces: never panics, never decodes more than
/// its limit, and comes to the same end both ways.
pub fn chunked(data: &[u8]) {
    let (step, data) = pieces(data);
    let limit = 512;
    let mut whole = h1::Chunked::default();
    let whole_end = whole.decode(&mut BytesMut::from(data), limit);
    assert!(whole.body.len() <= limit);
    let mut split = h1::Chunked::default();
    let mut buf = BytesMut::new();
    let mut end = Ok(false);
    for piece in data.chunks(step) {
        buf.extend_from_slice(piece);
        end = split.decode(&mut buf, limit);
        assert!(split.body.len() <= limit);
        if !matches!(end, Ok(false)) {
            break;
        }
    }
    assert_eq!(
        whole_end.is_ok(),
        end.is_ok(),
        "whole and piecewise decoding disagree"
    );
    if let (Ok(true), Ok(true)) = (&whole_end, &end) {
        assert_eq!(whole.body, split.body);
    }
}

/// Inputs of every datatype the decoders convert.
fn specs() -> Vec<TensorSpec> {
    let spec = |name: &str, datatype, shape: Vec<Option<i64>>| TensorSpec {
        name: name.into(),
        datatype,
        shape,
    };
    vec![
        spec("X", DataType::F32, vec![None, Some(4)]),
        spec("H", DataType::F16, vec![None]),
        spec("B", DataType::Bytes, vec![None]),
        spec("I", DataType::I64, vec![None, None]),
    ]
}

/// The V2 decoder, JSON and binary (the first two bytes give the JSON header's length, as
/// `inference-header-content-length` does), and the V1 decoder: never panic.
pub fn v2(data: &[u8]) {
    let specs = specs();
    let (json_len, body) = match data {
        [a, b, rest @ ..] => (Some(usize::from(u16::from_le_bytes([*a, *b]))), rest),
        _ => (None, data),
    };
    if let Ok(request) = protocol::parse_v2(body, json_len, &specs) {
        // Every decoded tensor holds what its shape says.
        for t in &request.inputs {
            let n = t.shape.iter().try_fold(1usize, |n, d| n.checked_mul(*d));
            assert_eq!(n, Some(t.data.len()));
        }
    }
    let _ = protocol::parse_v2(data, None, &specs);
    let _ = protocol::parse_v1(data, &specs[..1]);
}
