"""Alert events (the `alerts` topic) to Alertmanager: what each event means (`events`), the episodes they open and
close (`episodes`), delivery with retries and the offsets it allows to commit (`delivery`, `sink`), the HTTP client
(`client`), the Alertmanager configuration as the stack and tests render it (`amconfig`). No I/O but `client`."""
