"""Role interfaces and instrument drivers (VISA/SCPI, CAN, Modbus)."""
