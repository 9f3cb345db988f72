//! The source shared by `test-tag-a` and `test-tag-b`, which differ only in `TAG` (so their
//! components differ in bytes, and a test can tell which version answered after a hot reload).
//!
//! `on-request` forwards to the channel's routes, adding the request header `x-plugin-tag: <TAG>`
//! (all other header fields are kept); `on-response` adds the response header
//! `x-plugin-tag: <TAG>`.

use mediary_plugin::message::set_field;
use mediary_plugin::prelude::*;

use super::TAG;

pub struct Tag;

impl Router for Tag {
    fn on_request(request: Request) -> Action {
        let mut headers = request.headers;
        set_field(&mut headers, "x-plugin-tag", TAG);
        Action::forward().rewrite(Rewrite::new().headers(headers))
    }
}

impl Transformer for Tag {
    fn on_response(_request: Request, response: Response) -> Response {
        response.with_header("x-plugin-tag", TAG)
    }
}

mediary_plugin::export_plugin!(Tag);
