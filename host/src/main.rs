//! The `mediary` binary. Everything happens in the library: see `mediary::cli`.

// Many small, short-lived allocations per request (headers, buffers); mimalloc serves them with less
// locking and fragmentation than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    mediary::cli::main()
}
