"""Standard addresses (一标) and the door plates whose QR codes point at them."""
