//! The `usage-collector` binary: parses the command line and runs the library.

#[global_allocator]
static ALLOCATOR: usage_collector::MiMalloc = usage_collector::MiMalloc;

fn main() -> std::process::ExitCode {
    usage_collector::allocator::settle();
    usage_collector::cli::main()
}
