//! The receive path of one 512-record logs request, run a given number of times, for counting
//! instructions (`valgrind --tool=callgrind`), which the machine's other load does not change
//! as it changes times: `receive_cost N [derived]` reads the shape of, decodes and maps the
//! request N times (with `event.id` on every record, or on none: derived ids).

use prost::Message as _;
use usage_collector::catalog::{Catalog, convert};
use usage_collector::event::Signal;
use usage_collector::receiver::ingest::Violations;
use usage_collector::receiver::shape::{Limits, Shape};
use usage_pipeline_tests::fixtures::mixed_usage;

fn main() {
    let mut args = std::env::args().skip(1);
    let times: usize = args
        .next()
        .map_or(Ok(100), |n| n.parse())
        .expect("a number of times");
    let derived = args.next().as_deref() == Some("derived");
    let bytes = mixed_usage(512, !derived).encode_to_vec();
    let catalog = Catalog::built_in();
    let limits = Limits {
        max_records: 10_000,
        max_attributes: 128,
        max_value_bytes: 64 * 1024,
    };
    let mut rows = 0;
    for _ in 0..times {
        let shape = Shape::of(&bytes, Signal::Log, &limits).expect("shape");
        let converted =
            convert::logs(&bytes, &catalog, 500, Violations::new(&shape)).expect("request");
        rows += converted.events.len();
    }
    println!("{rows} events mapped");
}
