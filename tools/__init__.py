"""Server-side tools the router runs for the model: gpt-oss's built-in `python` and `browser`,
and the tools of MCP servers. Each executor turns one harmony tool call into the tool
message the model reads next.

`base` is the contract with the router's tool loop; `server_tools.ServerTools` builds the
enabled executors from settings and vets the MCP servers a request names; `python/` runs
code in a bubblewrap sandbox per session; `browser/` searches and shows pages (a local
BM25 index or an HTTP search API); `mcp_client` calls MCP servers through the `mcp` SDK;
`output_cap` is the one size limit every output goes through.
"""
