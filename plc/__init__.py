"""The last hop: verdicts from the runtime's channel into the PLC (Modbus TCP)."""
