//! The `usage-collector` binary: parses the command line and runs the library.

fn main() -> std::process::ExitCode {
    usage_collector::cli::main()
}
