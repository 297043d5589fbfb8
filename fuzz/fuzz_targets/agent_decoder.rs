//! Everything the agent parses from the host: arbitrary bytes, fed in
//! arbitrary chunks, through the frame decoder and the request parser.
//! (The host is trusted, but a bug here must not take the guest's PID 1
//! down with a panic either.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use scute_protocol::limits::MAX_PAYLOAD;
use scute_protocol::{FrameDecoder, FrameKind, Request, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut d = FrameDecoder::new();
    for piece in rest.chunks(chunk) {
        d.push(piece);
        assert!(d.buffered() <= HEADER_LEN + MAX_PAYLOAD + chunk);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    assert!(f.payload.len() <= MAX_PAYLOAD);
                    if f.kind == FrameKind::Request {
                        let _ = serde_json::from_slice::<Request>(&f.payload);
                    } else {
                        let _ = f.credit_bytes();
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
