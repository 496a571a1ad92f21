#![no_main]
//! The `:authority` front's frame rewriter over any client bytes: never panics, never stalls
//! (room for more input whenever it asks for more), and one step never hands the server more
//! than a frame's worth.
//!
//! Input: one byte choosing the read size, then what the client sends after the preface.

use libfuzzer_sys::fuzz_target;
use wimsey_csi::socket::authority::frames::{ClientFrames, FrontLimits, INPUT_CAPACITY, PREFACE};

fuzz_target!(|data: &[u8]| {
    let Some((&read_size, client)) = data.split_first() else {
        return;
    };
    let read_size = usize::from(read_size).max(1) * 67;
    let bytes = [PREFACE, client].concat();
    let mut frames = ClientFrames::new(FrontLimits::default());
    let mut out = Vec::new();
    for mut read in bytes.chunks(read_size) {
        while !read.is_empty() {
            let taken = frames.feed(read);
            read = &read[taken..];
            loop {
                match frames.step(&mut out) {
                    Ok(true) => {
                        assert!(out.len() <= INPUT_CAPACITY, "one step made {}", out.len());
                        out.clear();
                    }
                    Ok(false) => {
                        assert!(
                            !frames.spare().is_empty(),
                            "asks for input it has no room for"
                        );
                        break;
                    }
                    Err(_) => return,
                }
            }
        }
    }
});
