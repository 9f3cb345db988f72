//! Write Mediary channel plugins in Rust.
//!
//! A plugin is a WebAssembly component that decides, for every request its channel admits, where
//! the request goes, or answers or refuses it itself; a plugin may also transform the upstream's
//! response. This crate wraps the bindings generated from Mediary's WIT package
//! (`mediary:plugin@0.1.0`) in plain Rust: typed [`Request`], [`Response`] and [`Action`] with
//! helpers, and safe functions for the host capabilities ([`log`], [`config`], [`kv`], [`http`],
//! [`clock`]).
//!
//! ```ignore
//! use mediary_plugin::prelude::*;
//!
//! struct Hello;
//!
//! impl Router for Hello {
//!     fn on_request(req: Request) -> Action {
//!         match req.header("x-greeting") {
//!             Some(name) => Action::respond(Response::new(200).with_body(format!("hello {name}"))),
//!             None => Action::forward(),
//!         }
//!     }
//! }
//!
//! mediary_plugin::export_router!(Hello);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2` (a `cdylib` crate): the `.wasm` is a
//! component ready for Mediary.
//!
//! # Layout
//!
//! - [`message`]: helpers on the WIT values ([`Request`], [`Response`], [`Action`], [`Rewrite`]).
//! - [`log`], [`config`], [`kv`], [`http`], [`clock`]: the host's capabilities, one module each.
//! - [`Router`], [`Transformer`], [`export_router!`], [`export_plugin!`]: what a plugin implements
//!   and how it is exported as the `router-plugin` or the `channel-plugin` world.
//!
//! # Bindings
//!
//! The imports and the `types` interface are generated once, from the `router-plugin` world. The
//! `channel-plugin` world is `router-plugin` plus the `transformer` export; its extra part is
//! generated from a one-line world that exports only `transformer` and shares the same `types`.
//! (Generating `channel-plugin` in full would generate the `router` export a second time, and
//! wit-bindgen's exported macros for it would clash within this crate.) Each export macro embeds
//! its world's type information in the plugin crate, so a component built with
//! [`export_router!`] exports `router` only, and one built with [`export_plugin!`] exports both.

pub mod clock;
pub mod config;
pub mod http;
pub mod kv;
pub mod log;
pub mod message;

pub use message::{Action, Client, Fields, Request, Response, Rewrite, Target};

/// What most plugins need: `use mediary_plugin::prelude::*;`.
pub mod prelude {
    pub use crate::message::{Action, Client, Fields, Request, Response, Rewrite, Target};
    pub use crate::{Router, Transformer, clock, config, http, kv, log};
}

/// Decides what happens to each request the channel admits: the `router` export, which every
/// plugin has.
///
/// A plugin instance may serve many requests one after the other (never two at once), so a
/// `static` (`OnceLock`) is the place for what is computed once, such as parsed configuration.
pub trait Router {
    /// Forwards (possibly rewritten), answers or refuses `request`.
    fn on_request(request: Request) -> Action;
}

/// Turns the upstream's response into the one the client gets: the `transformer` export.
pub trait Transformer: Router {
    /// Called for forwarded requests whose route answered. `request` is the client's original
    /// request (not a rewritten one).
    fn on_response(request: Request, response: Response) -> Response;
}

/// Exports a [`Router`] as a component of the `router-plugin` world (no `transformer` export).
///
/// ```ignore
/// struct MyRouter;
/// impl mediary_plugin::Router for MyRouter { /* ... */ }
/// mediary_plugin::export_router!(MyRouter);
/// ```
#[macro_export]
macro_rules! export_router {
    ($ty:ident) => {
        $crate::__private::export_router_world!($ty with_types_in $crate::__private);
    };
}

/// Exports a [`Transformer`] (and so a [`Router`]) as a component of the `channel-plugin` world.
///
/// ```ignore
/// struct MyPlugin;
/// impl mediary_plugin::Router for MyPlugin { /* ... */ }
/// impl mediary_plugin::Transformer for MyPlugin { /* ... */ }
/// mediary_plugin::export_plugin!(MyPlugin);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($ty:ident) => {
        $crate::__private::export_router_world!($ty with_types_in $crate::__private);
        $crate::__private::transformer::export_transformer_world!(
            $ty with_types_in $crate::__private::transformer
        );
    };
}

/// The generated bindings and the glue the export macros expand to. Not a stable API.
#[doc(hidden)]
pub mod __private {
    wit_bindgen::generate!({
        world: "router-plugin",
        path: "../../../wit",
        generate_all,
        additional_derives: [PartialEq, Eq],
        pub_export_macro: true,
        export_macro_name: "export_router_world",
        default_bindings_module: "mediary_plugin::__private",
    });

    /// The `channel-plugin` world's addition to `router-plugin`: the `transformer` export.
    pub mod transformer {
        wit_bindgen::generate!({
            inline: "
                package mediary:plugin-sdk;
                world transformer-export {
                    export mediary:plugin/transformer@0.1.0;
                }
            ",
            path: "../../../wit",
            with: {
                "mediary:plugin/types@0.1.0": crate::__private::mediary::plugin::types,
            },
            pub_export_macro: true,
            export_macro_name: "export_transformer_world",
            default_bindings_module: "mediary_plugin::__private::transformer",
        });
    }

    use crate::{Action, Request, Response, Router, Transformer};

    impl<T: Router> exports::mediary::plugin::router::Guest for T {
        fn on_request(request: Request) -> Action {
            crate::log::install_panic_hook();
            T::on_request(request)
        }
    }

    impl<T: Transformer> transformer::exports::mediary::plugin::transformer::Guest for T {
        fn on_response(request: Request, response: Response) -> Response {
            crate::log::install_panic_hook();
            T::on_response(request, response)
        }
    }
}
