print("defib")
