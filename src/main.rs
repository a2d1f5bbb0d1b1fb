//! The `sessiond` binary: hands the command line over to the library.

// Heap profiles need jemalloc's profiler, so the `profiling` build allocates with jemalloc.
#[cfg(feature = "profiling")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    sessiond::cli::main()
}
