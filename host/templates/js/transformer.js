
export const transformer = {
  // Marks every answer that went through the plugin.
  onResponse(request, response) {
    return { ...response, headers: [...response.headers, ['x-mediary-plugin', '{{name}}']] };
  },
};
