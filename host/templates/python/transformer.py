
class Transformer(exports.Transformer):
    def on_response(self, request: types.Request, response: types.Response) -> types.Response:
        """Marks every answer that went through the plugin."""
        response.headers.append(("x-mediary-plugin", "{{name}}"))
        return response
