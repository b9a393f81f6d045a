//! Any bytes, decoded as a run of index records, and also wrapped as the payload of a
//! frame with a valid checksum (so the parser behind the checksum is reached): never
//! a panic, and whatever decodes encodes back to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use strata::tier::disk::{decode_record, encode_record};

fn check_run(data: &[u8]) {
    let mut off = 0;
    while off < data.len() {
        match decode_record(&data[off..]) {
            Ok((rec, n)) => {
                let mut again = Vec::new();
                encode_record(&rec, &mut again);
                assert_eq!(&again[..], &data[off..off + n], "decode/encode round trip");
                off += n;
            }
            Err(_) => break,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check_run(data);
    if !data.is_empty() && data.len() <= 1 << 20 {
        let len = (data.len() as u32).to_le_bytes();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&len), data);
        let mut frame = Vec::with_capacity(data.len() + 8);
        frame.extend_from_slice(&len);
        frame.extend_from_slice(&crc.to_le_bytes());
        frame.extend_from_slice(data);
        check_run(&frame);
    }
});
