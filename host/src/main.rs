//! The `mediary` binary. Everything happens in the library: see `mediary::cli`.

// Many small, short-lived allocations per request (headers, buffers); mimalloc serves them with less
// locking and fragmentation than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // mimalloc asks for transparent huge pages for its arenas; every fresh arena page then costs the
    // kernel a 2 MiB clear. The store's writer allocates page buffers in bursts, and with THP that
    // clearing took a sixth of a core under load (perf, `clear_page_erms`). Small pages cost nothing
    // measurable on the data path. Failing to set it only costs that time, so it is not fatal.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    mediary::cli::main()
}
