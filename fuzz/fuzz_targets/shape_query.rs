//! Arbitrary bytes as the query string of `GET /v1/shape`: parameter parsing must never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let query = String::from_utf8_lossy(data);
    let _ = volt_http::parse_shape_query(&query);
});
