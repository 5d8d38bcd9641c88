"""gpt-oss's built-in `browser` tool: `search`, `open` and `find` over a search backend (a
local BM25 index over a docs folder, or an HTTP search API), shown the way the model was
trained to read pages: `[cursor] title (url)`, a line window, `L{n}: ` prefixes, links as
`【id†text†domain】`."""
