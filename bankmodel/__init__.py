"""What every room shares: DUT and module specifications, positions, quantities and units, file
loading with located errors, the channel map, and the CAN frame both ends of the BMS bus send.
Depends on no other room of this project, so the harness, the drivers and the twin can all use
it and a hardware run never loads the twin."""
