"""The napari side: session, layers, jobs, widgets, reader, writer and sample data.

The only package that imports napari, Qt, magicgui or vispy.
"""
