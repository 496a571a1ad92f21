//! The frame rewriter and its bounds, sans IO.

use super::frames::{
    ClientFrames, FrontError, FrontLimits, INPUT_CAPACITY, MAX_FRAME, MAX_TABLE_SIZE, PREFACE,
    connection_error_frame, frame_head, parse_head,
};
use super::hpack::{HpackError, put_integer};

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// A request header block as grpc-go encodes it (through an independent HPACK encoder), with the
/// socket path as `:authority`.
fn request_block(authority: &str) -> Vec<u8> {
    fluke_hpack::Encoder::new().encode([
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":authority", authority.as_bytes()),
        (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"workload.spiffe.io", b"true"),
    ])
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    [&frame_head(payload.len(), kind, flags, stream)[..], payload].concat()
}

/// `block` as a HEADERS frame plus CONTINUATION frames of at most `max` bytes each.
fn header_frames(block: &[u8], stream: u32, max: usize) -> Vec<u8> {
    let chunks: Vec<&[u8]> = block.chunks(max).collect();
    let mut out = Vec::new();
    for (at, chunk) in chunks.iter().enumerate() {
        let kind = if at == 0 { HEADERS } else { CONTINUATION };
        let flags = if at + 1 == chunks.len() {
            END_HEADERS
        } else {
            0
        };
        out.extend(frame(kind, flags, stream, chunk));
    }
    out
}

/// Everything `frames` produces for `bytes` fed in pieces of `piece`, or the first error; also
/// the most one step produced.
fn run(
    frames: &mut ClientFrames,
    bytes: &[u8],
    piece: usize,
) -> (Vec<u8>, usize, Result<(), FrontError>) {
    let mut all = Vec::new();
    let mut largest_step = 0;
    let mut out = Vec::new();
    for mut chunk in bytes.chunks(piece) {
        while !chunk.is_empty() {
            let taken = frames.feed(chunk);
            chunk = &chunk[taken..];
            loop {
                match frames.step(&mut out) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(error) => return (all, largest_step, Err(error)),
                }
                largest_step = largest_step.max(out.len());
                all.append(&mut out);
            }
        }
    }
    (all, largest_step, Ok(()))
}

/// The server's view of `out`: (kind, flags, stream, payload) per frame after the preface.
fn frames_of(out: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut rest = out.strip_prefix(PREFACE).expect("preface first");
    let mut frames = Vec::new();
    while let Some(head) = rest.first_chunk::<9>() {
        let (length, kind, flags, stream) = parse_head(head);
        frames.push((kind, flags, stream, rest[9..9 + length].to_vec()));
        rest = &rest[9 + length..];
    }
    assert!(rest.is_empty(), "whole frames only");
    frames
}

#[test]
fn rewrites_header_blocks_whatever_the_read_sizes() {
    let settings = frame(0x4, 0, 0, &[]);
    let block = request_block("/var/lib/kubelet/plugins_registry/x-reg.sock");
    let data = frame(0x0, END_STREAM, 1, &[1, 2, 3]);
    let bytes = [
        PREFACE,
        &settings,
        &header_frames(&block, 1, 5),
        &data,
        // A second request on the same connection reuses the client's dynamic table.
        &header_frames(&block, 3, MAX_FRAME),
    ]
    .concat();
    for piece in [1, 7, 9, 64, bytes.len()] {
        let (out, _, result) = run(
            &mut ClientFrames::new(FrontLimits::default()),
            &bytes,
            piece,
        );
        result.expect("valid client bytes");
        let frames = frames_of(&out);
        assert_eq!(frames.len(), 4, "read size {piece}");
        assert_eq!(frames[0].3, b"", "SETTINGS as sent");
        assert_eq!(
            frames[2],
            (0x0, END_STREAM, 1, vec![1, 2, 3]),
            "DATA untouched"
        );
        // The server's decoder (an independent one) sees the same requests with a local authority.
        let mut decoder = fluke_hpack::Decoder::new();
        for (kind, flags, stream, payload) in [&frames[1], &frames[3]] {
            assert_eq!((*kind, *flags & END_HEADERS), (HEADERS, END_HEADERS));
            let headers = decoder.decode(payload).expect("hpack");
            assert_eq!(headers[2], (b":authority".to_vec(), b"localhost".to_vec()));
            assert_eq!(headers[3].1, b"/SpiffeWorkloadAPI/FetchX509SVID");
            assert_eq!(headers.len(), 7, "stream {stream}");
        }
    }
}

#[test]
fn keeps_priority_and_end_stream_and_drops_padding() {
    let block = request_block("localhost");
    let payload = [&[2u8][..], &[0, 0, 0, 3, 16], &block, &[0, 0]].concat();
    let bytes = [
        PREFACE,
        &frame(
            HEADERS,
            PADDED | PRIORITY | END_STREAM | END_HEADERS,
            5,
            &payload,
        ),
    ]
    .concat();
    let (out, _, result) = run(&mut ClientFrames::new(FrontLimits::default()), &bytes, 1000);
    result.expect("valid");
    let frames = frames_of(&out);
    let (kind, flags, stream, payload) = &frames[0];
    assert_eq!(
        (*kind, *flags, *stream),
        (HEADERS, PRIORITY | END_STREAM | END_HEADERS, 5)
    );
    assert_eq!(&payload[..5], [0, 0, 0, 3, 16]);
    let padding_too_long = [PREFACE, &frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 1])].concat();
    let (_, _, result) = run(
        &mut ClientFrames::new(FrontLimits::default()),
        &padding_too_long,
        99,
    );
    assert!(
        matches!(result, Err(FrontError::MalformedHeaders(_))),
        "{result:?}"
    );
}

#[test]
fn refuses_what_is_not_http2_a_broken_block_or_a_push_promise() {
    let refused = |bytes: &[u8]| {
        let (_, _, result) = run(&mut ClientFrames::new(FrontLimits::default()), bytes, 4096);
        result.expect_err("refused")
    };
    assert!(matches!(
        refused(b"GET / HTTP/1.1\r\n"),
        FrontError::NotHttp2
    ));
    let interleaved = [
        PREFACE,
        &frame(HEADERS, 0, 1, &[0x82]),
        &frame(0x4, 0, 0, &[]),
    ]
    .concat();
    assert!(matches!(
        refused(&interleaved),
        FrontError::HeaderBlockInterrupted
    ));
    let other_stream = [
        PREFACE,
        &frame(HEADERS, 0, 1, &[0x82]),
        &frame(CONTINUATION, END_HEADERS, 3, &[0x84]),
    ]
    .concat();
    assert!(matches!(
        refused(&other_stream),
        FrontError::HeaderBlockInterrupted
    ));
    let oversized = [PREFACE, &frame_head(MAX_FRAME + 1, 0x0, 0, 1)[..]].concat();
    assert!(matches!(refused(&oversized), FrontError::FrameTooLarge(_)));
    let push = [PREFACE, &frame(0x5, END_HEADERS, 1, &[0, 0, 0, 2, 0x82])].concat();
    assert!(matches!(refused(&push), FrontError::PushPromise));
}

/// The block of the issue: one 4,000-byte header added to the dynamic table, then one-byte
/// references to it (index 62, the newest entry).
fn bomb_block(references: usize) -> Vec<u8> {
    let mut block = vec![0x40, 0x01, b'x'];
    put_integer(4000, 7, 0x00, &mut block);
    block.extend(std::iter::repeat_n(b'a', 4000));
    block.extend(std::iter::repeat_n(0xbe, references));
    block
}

#[test]
fn the_hpack_bomb_is_refused_within_a_small_bound() {
    // The ~65 KB block of the issue is refused once its buffered bytes pass the block limit.
    let bomb = [PREFACE, &header_frames(&bomb_block(60_000), 1, MAX_FRAME)].concat();
    let mut frames = ClientFrames::new(FrontLimits::default());
    let (out, largest_step, result) = run(&mut frames, &bomb, 16 * 1024);
    assert!(
        matches!(result, Err(FrontError::HeaderBlockTooLarge(16_384))),
        "{result:?}"
    );
    assert_eq!(out, PREFACE, "nothing of the block reaches the server");
    assert!(largest_step <= PREFACE.len());

    // Within the block limit, decoding stops at the list limit: the fifth reference would take
    // the list past 16 KiB. 60,000 references would have made 240 MB.
    let bomb = [PREFACE, &header_frames(&bomb_block(12_000), 1, MAX_FRAME)].concat();
    let (out, _, result) = run(
        &mut ClientFrames::new(FrontLimits::default()),
        &bomb,
        16 * 1024,
    );
    assert!(
        matches!(
            result,
            Err(FrontError::Hpack(HpackError::ListTooLarge(16_384)))
        ),
        "{result:?}"
    );
    assert_eq!(out, PREFACE);

    // The same bomb spread over many small blocks: each block is refused or bounded, and one
    // step never produces more than a frame's worth for the server.
    let mut many = PREFACE.to_vec();
    many.extend(header_frames(&bomb_block(3), 1, MAX_FRAME));
    for stream in (3..2001).step_by(2) {
        many.extend(frame(HEADERS, END_HEADERS, stream, &[0xbe, 0xbe, 0xbe]));
    }
    let (out, largest_step, result) =
        run(&mut ClientFrames::new(FrontLimits::default()), &many, 4096);
    result.expect("each block is within the limits");
    assert!(
        largest_step <= INPUT_CAPACITY,
        "one step produced {largest_step} bytes"
    );
    assert_eq!(frames_of(&out).len(), 1000);
}

#[test]
fn a_table_size_update_above_4096_is_refused() {
    let update = |size: usize| {
        let mut block = Vec::new();
        put_integer(size, 5, 0x20, &mut block);
        block.push(0x82);
        [PREFACE, &frame(HEADERS, END_HEADERS, 1, &block)].concat()
    };
    let (_, _, result) = run(
        &mut ClientFrames::new(FrontLimits::default()),
        &update(MAX_TABLE_SIZE),
        99,
    );
    result.expect("4096 is what the server allows");
    let (_, _, result) = run(
        &mut ClientFrames::new(FrontLimits::default()),
        &update(MAX_TABLE_SIZE + 1),
        99,
    );
    assert!(
        matches!(
            result,
            Err(FrontError::Hpack(HpackError::TableSizeTooLarge {
                requested: 4097
            }))
        ),
        "{result:?}"
    );
    // Only at the start of a block (RFC 7541 4.2).
    let late = [PREFACE, &frame(HEADERS, END_HEADERS, 1, &[0x82, 0x20])].concat();
    let (_, _, result) = run(&mut ClientFrames::new(FrontLimits::default()), &late, 99);
    assert!(matches!(
        result,
        Err(FrontError::Hpack(HpackError::TableSizeUpdateLate))
    ));
}

#[test]
fn an_oversized_header_list_or_too_many_headers_is_refused() {
    let limits = FrontLimits::default();
    let request = |block: &[u8]| [PREFACE, &header_frames(block, 1, MAX_FRAME)].concat();
    // 128 fields pass, 129 do not (`:method: GET` from the static table, 42 bytes counted each).
    let (_, _, result) = run(&mut ClientFrames::new(limits), &request(&[0x82; 128]), 4096);
    result.expect("128 fields");
    let (_, _, result) = run(&mut ClientFrames::new(limits), &request(&[0x82; 129]), 4096);
    assert!(matches!(
        result,
        Err(FrontError::Hpack(HpackError::TooManyHeaders(128)))
    ));

    // 390 x 42 = 16,380 bytes pass; one more field is over 16 KiB.
    let many = FrontLimits {
        max_headers: 1000,
        ..limits
    };
    let (_, _, result) = run(&mut ClientFrames::new(many), &request(&[0x82; 390]), 4096);
    result.expect("16,380 bytes");
    let (_, _, result) = run(&mut ClientFrames::new(many), &request(&[0x82; 391]), 4096);
    assert!(matches!(
        result,
        Err(FrontError::Hpack(HpackError::ListTooLarge(16_384)))
    ));

    // A Huffman value that decodes past the list size is stopped while it decodes: 10,300
    // bytes of '0' (5 bits each) decode to 16,480.
    let mut block = vec![0x00, 0x01, b'x'];
    put_integer(10_300, 7, 0x80, &mut block);
    block.extend(std::iter::repeat_n(0x00, 10_300));
    let (_, _, result) = run(&mut ClientFrames::new(limits), &request(&block), 4096);
    assert!(
        matches!(result, Err(FrontError::Hpack(HpackError::ListTooLarge(_)))),
        "{result:?}"
    );
}

#[test]
fn truncated_header_blocks_never_panic_at_any_cut() {
    // A block with every representation: a table size update, indexed static and dynamic
    // fields, literals with and without indexing, never indexed, Huffman and plain strings.
    let mut block = vec![0x3f, 0xe1, 0x1f, 0x82, 0x86];
    block.extend(request_block("/var/lib/kubelet/pods/a/volumes/x/socket"));
    block.extend([
        0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
    ]);
    block.extend([0x10, 0x01, b'k', 0x01, b'v', 0x00, 0x01, b'n', 0x00, 0xbe]);
    let whole = [PREFACE, &frame(HEADERS, END_HEADERS, 1, &block)].concat();
    let (_, _, result) = run(&mut ClientFrames::new(FrontLimits::default()), &whole, 4096);
    result.expect("the whole block is valid");
    for cut in 0..block.len() {
        let bytes = [PREFACE, &frame(HEADERS, END_HEADERS, 1, &block[..cut])].concat();
        let (_, _, result) = run(&mut ClientFrames::new(FrontLimits::default()), &bytes, 4096);
        // Some cuts fall between fields and are whole blocks; the rest are errors.
        if let Err(error) = result {
            assert!(matches!(error, FrontError::Hpack(_)), "cut {cut}: {error}");
        }
        // The connection's bytes cut short: nothing is produced for an unfinished frame.
        let (out, _, result) = run(
            &mut ClientFrames::new(FrontLimits::default()),
            &whole[..PREFACE.len() + cut],
            7,
        );
        result.expect("an unfinished frame waits");
        assert_eq!(out, PREFACE);
    }
}

#[test]
fn the_refusal_frame_is_a_connection_error_for_the_server() {
    // HEADERS on stream 0 (RFC 9113 6.2): h2 answers it with GOAWAY(PROTOCOL_ERROR).
    let (length, kind, _, stream) = parse_head(&connection_error_frame());
    assert_eq!((length, kind, stream), (0, HEADERS, 0));
}

#[test]
fn frame_heads_round_trip() {
    let head = frame_head(70_000, HEADERS, END_HEADERS, 7);
    assert_eq!(parse_head(&head), (70_000, HEADERS, END_HEADERS, 7));
}

#[test]
fn a_large_rewritten_block_is_split_into_continuation_frames() {
    // With limits above the defaults (under them a re-encoded block always fits one frame: a
    // field takes at most 7 bytes besides its name and value, and 32 are counted for it).
    let limits = FrontLimits {
        max_header_list_size: 64 * 1024,
        max_headers: 1000,
        max_header_block: 64 * 1024,
    };
    let fields: Vec<(Vec<u8>, Vec<u8>)> = (0..200)
        .map(|i| (format!("x-field-{i:03}").into_bytes(), vec![b'v'; 140]))
        .collect();
    let mut encoder = fluke_hpack::Encoder::new();
    let mut headers = vec![(b":method".to_vec(), b"POST".to_vec())];
    headers.extend(fields);
    let block = encoder.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
    let bytes = [PREFACE, &header_frames(&block, 1, 4000)].concat();
    let (out, _, result) = run(&mut ClientFrames::new(limits), &bytes, 4096);
    result.expect("within the limits");
    let frames = frames_of(&out);
    assert_eq!(frames.len(), 2);
    let joined: Vec<u8> = frames.iter().flat_map(|f| f.3.clone()).collect();
    for (at, (kind, flags, _, _)) in frames.iter().enumerate() {
        assert_eq!(*kind, if at == 0 { HEADERS } else { CONTINUATION });
        assert_eq!(flags & END_HEADERS != 0, at + 1 == frames.len());
    }
    let decoded = fluke_hpack::Decoder::new().decode(&joined).expect("hpack");
    assert_eq!(decoded, headers);
}
