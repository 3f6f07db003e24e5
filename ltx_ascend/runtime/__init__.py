"""Runtime: the device layer, one Session over om / ort / eager backends, artifact lookup."""
