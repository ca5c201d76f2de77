//! Property tests of the frame decoder: whatever bytes arrive (garbage,
//! truncated, oversized or mutated valid frames), decoding returns an error
//! or a value, never panics, and never allocates past the frame limit.
//!
//! The valid frames built in `corpus()` are the seeds that mutations start from.

use pool_core::wire::{self, FromWorker, Items, ToWorker};
use pool_core::{ProtocolError, TaskFailure};
use proptest::prelude::*;

const LIMIT: usize = 1 << 16;

/// Valid frames of every kind: the mutation corpus.
fn corpus() -> Vec<Vec<u8>> {
    let mut args = Vec::new();
    wire::push_arg(&mut args, &(2u64, 3u32), usize::MAX).expect("encode");
    wire::push_arg(&mut args, &"text".to_owned(), usize::MAX).expect("encode");
    let mut results = Vec::new();
    let mark = wire::begin_result(&mut results);
    results.extend_from_slice(&postcard::to_stdvec(&42u64).expect("encode"));
    wire::finish_result(&mut results, mark, wire::ITEM_OK);
    wire::push_failure(
        &mut results,
        &TaskFailure::Panicked {
            message: "boom".into(),
            location: "a.rs:1:2".into(),
            backtrace: None,
        },
    );
    let frames: Vec<(Vec<u8>, &[u8])> = vec![
        (
            wire::encode_header(&ToWorker::Hello {
                protocol: 1,
                fingerprint: 7,
                max_frame: 1024,
                max_memory: Some(1 << 20),
            }),
            &[],
        ),
        (
            wire::encode_header(&ToWorker::Run {
                chunk: 1,
                task: 2,
                items: 2,
                panic_retries: 0,
                timed: false,
            }),
            &args,
        ),
        (wire::encode_header(&ToWorker::Init { task: 3 }), &args),
        (wire::encode_header(&ToWorker::Exit), &[]),
        (
            wire::encode_header(&FromWorker::Ready {
                protocol: 1,
                fingerprint: 7,
                pid: 9,
            }),
            &[],
        ),
        (
            wire::encode_header(&FromWorker::Results {
                chunk: 1,
                first: 0,
                count: 2,
            }),
            &results,
        ),
        (
            wire::encode_header(&FromWorker::InitDone { failure: None }),
            &[],
        ),
        (
            wire::encode_header(&FromWorker::Retiring {
                reason: wire::Retire::Memory {
                    resident: 200 << 20,
                    limit: 100 << 20,
                },
            }),
            &[],
        ),
    ];
    frames
        .into_iter()
        .map(|(header, body)| {
            let mut out = Vec::new();
            wire::write_frame(&mut out, &header, body, LIMIT).expect("write");
            out
        })
        .collect()
}

/// Decodes `bytes` as a stream of frames the way both sides do; returns how
/// many frames decoded fully.
fn decode_all(bytes: &[u8]) -> usize {
    let mut input = bytes;
    let mut buf = Vec::new();
    let mut frames = 0;
    loop {
        match wire::read_frame(&mut input, LIMIT, &mut buf) {
            Ok(()) => {}
            Err(ProtocolError::TooLarge { size, limit }) => {
                assert!(size > limit);
                assert!(buf.capacity() <= LIMIT, "allocated past the limit");
                return frames;
            }
            Err(_) => return frames,
        }
        assert!(buf.len() <= LIMIT);
        if let Ok((ToWorker::Run { items, .. }, body)) = wire::split_frame::<ToWorker>(&buf) {
            let mut it = Items::new(body);
            for _ in 0..items.min(1000) {
                if it.next_arg().is_err() {
                    break;
                }
            }
        }
        if let Ok((FromWorker::Results { count, .. }, body)) = wire::split_frame::<FromWorker>(&buf)
        {
            let mut it = Items::new(body);
            for _ in 0..count.min(1000) {
                if it.next_result().is_err() {
                    break;
                }
            }
        }
        frames += 1;
    }
}

#[test]
fn the_corpus_decodes() {
    let corpus = corpus();
    let stream: Vec<u8> = corpus.concat();
    assert_eq!(decode_all(&stream), corpus.len());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn mutated_frames_never_panic(
        seed in 0usize..7,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut frame = corpus()[seed].clone();
        for (at, byte) in flips {
            let len = frame.len();
            frame[at % len] = byte;
        }
        let cut = cut % (frame.len() + 1);
        decode_all(&frame[..cut]);
        decode_all(&frame);
    }

    #[test]
    fn truncated_frames_are_errors(seed in 0usize..7, cut in any::<usize>()) {
        let frame = corpus()[seed].clone();
        let cut = cut % frame.len();
        let mut buf = Vec::new();
        let err = wire::read_frame(&mut &frame[..cut], LIMIT, &mut buf).expect_err("truncated");
        let closed_or_truncated = matches!(err, ProtocolError::Closed | ProtocolError::Truncated { .. });
        prop_assert!(closed_or_truncated, "{err:?}");
    }

    #[test]
    fn announced_sizes_above_the_limit_allocate_nothing(size in (LIMIT as u32 + 1)..u32::MAX) {
        let mut frame = size.to_le_bytes().to_vec();
        frame.extend_from_slice(&[0; 16]);
        let mut buf = Vec::new();
        let err = wire::read_frame(&mut &frame[..], LIMIT, &mut buf).expect_err("too large");
        let too_large = matches!(err, ProtocolError::TooLarge { .. });
        prop_assert!(too_large, "{:?}", err);
        prop_assert_eq!(buf.capacity(), 0);
    }
}

#[test]
fn a_wrong_protocol_version_is_visible_before_anything_else() {
    // `protocol` is the first field of the handshake in every version.
    let hello = wire::encode_header(&ToWorker::Hello {
        protocol: 99,
        fingerprint: 1,
        max_frame: 1,
        max_memory: None,
    });
    match wire::split_frame::<ToWorker>(&hello) {
        Ok((ToWorker::Hello { protocol, .. }, _)) => assert_eq!(protocol, 99),
        other => panic!("{other:?}"),
    }
}
