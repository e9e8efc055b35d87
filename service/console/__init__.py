"""The console: the product page's "Create and manage API keys" pages, for people, on
the HTTP listener at /console/. Server-rendered Jinja2 templates and htmx, every asset
shipped in this package; every action goes through the same wrapped methods as gRPC
(service.api.interceptors), with the signed-in caller, so roles, projects, rate limits,
the actor of each change and errors are the same as for any other client."""
