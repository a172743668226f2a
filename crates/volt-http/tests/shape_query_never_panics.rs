//! Property test: any query string reaching `GET /v1/shape` parses into a shape definition
//! or a 400 reason, never a panic. (`fuzz/` has the same as a libFuzzer target.)

use proptest::prelude::*;

const PIECES: &[&str] = &[
    "table=",
    "items",
    "public.items",
    "%22My%22.t",
    "where=",
    "id%3D1",
    "%27",
    "offset=",
    "-1",
    "0_0",
    "now",
    "handle=",
    "live=",
    "true",
    "columns=",
    "id,name",
    "%22a%2Cb%22",
    "replica=",
    "full",
    "log=",
    "changes_only",
    "params[1]=",
    "params[2]=",
    "params[x]=",
    "params%5B1%5D=",
    "subset__where=",
    "&",
    "=",
    "%",
    "%ZZ",
    "+",
    ";",
    "\u{e9}",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parameter_soup_never_panics(pieces in prop::collection::vec(prop::sample::select(PIECES), 0..16)) {
        let _ = volt_http::parse_shape_query(&pieces.concat());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = volt_http::parse_shape_query(&String::from_utf8_lossy(&bytes));
    }
}
