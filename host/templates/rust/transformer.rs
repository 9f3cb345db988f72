
impl exports::mediary::plugin::transformer::Guest for Plugin {
    /// Marks every answer that went through the plugin.
    fn on_response(
        _request: Request,
        mut response: mediary::plugin::types::Response,
    ) -> mediary::plugin::types::Response {
        response
            .headers
            .push(("x-mediary-plugin".to_owned(), "{{name}}".to_owned()));
        response
    }
}
