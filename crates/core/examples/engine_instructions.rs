//! One run of the engine bench's workload (`benches/common/workload.rs`), for counting
//! instructions rather than timing them: timings on a shared 2-vCPU machine vary by 20%
//! between runs, instruction counts do not.
//!
//! ```sh
//! cargo build --release -p shieldwall-core --example engine_instructions
//! valgrind --tool=callgrind --toggle-collect='shieldwall_core::replica::Replica::handle' \
//!     target/release/examples/engine_instructions 100
//! ```
//!
//! The argument is the batch size (default 100); `SLOTS` slots are handled.

#[path = "../benches/common/workload.rs"]
mod workload;

fn main() {
    let batch: usize = match std::env::args().nth(1) {
        None => 100,
        Some(a) => match a.parse() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("usage: engine_instructions [BATCH_SIZE > 0]");
                std::process::exit(2);
            }
        },
    };
    let slots = workload::messages(batch);
    let elapsed = workload::run(&slots);
    println!(
        "batch {batch}: {} slots, {} requests in {elapsed:?}",
        workload::SLOTS,
        workload::SLOTS * batch as u64
    );
}
