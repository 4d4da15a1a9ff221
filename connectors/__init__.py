"""Adapters to outside systems (HIS, LIS, PACS ...): inbound endpoints and outbound senders for the outbox."""
