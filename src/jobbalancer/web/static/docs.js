// Swagger UI on /docs, reading the schema with the page's session cookie. A file of its
// own: the Content-Security-Policy allows no inline script.
window.addEventListener("DOMContentLoaded", function () {
  window.SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    docExpansion: "list",
    defaultModelsExpandDepth: 0,
    persistAuthorization: false,
    // "Try it out" rides on the session cookie, which needs the page's CSRF token on
    // anything that changes something.
    requestInterceptor: function (request) {
      var headers = JSON.parse(document.body.getAttribute("hx-headers") || "{}");
      if (headers["X-CSRF-Token"]) request.headers["X-CSRF-Token"] = headers["X-CSRF-Token"];
      return request;
    },
  });
});
