//! The one place where the WIT interface becomes Rust (`wit/plugin.wit`). The rest of the host sees
//! these types only through [`super::call`] and [`super::imports`].

wasmtime::component::bindgen!({
    path: "../wit",
    world: "channel-plugin",
    // Every import may wait (the store, the network), and every export is called from a worker's
    // tokio runtime.
    imports: { default: async },
    exports: { default: async },
});

pub use self::exports::mediary::plugin::router;
pub use self::exports::mediary::plugin::transformer;
pub use self::mediary::plugin::{clock, config, kv, log, outbound_http, types};
