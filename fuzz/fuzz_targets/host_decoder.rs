//! Everything the host parses from the guest: arbitrary bytes, fed in
//! arbitrary chunks, through the frame decoder and the message parsers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scute_protocol::limits::MAX_PAYLOAD;
use scute_protocol::{Event, FrameDecoder, FrameKind, Response, HEADER_LEN};

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
                    match f.kind {
                        FrameKind::Response => {
                            let _ = serde_json::from_slice::<Response>(&f.payload);
                        }
                        FrameKind::Event => {
                            let _ = serde_json::from_slice::<Event>(&f.payload);
                        }
                        _ => {}
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
