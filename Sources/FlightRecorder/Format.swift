// The flight recorder format lands here (see ParkingLock).
