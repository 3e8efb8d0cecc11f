"""Volume nodes <-> SimpleITK images, converting Slicer's RAS to the core's LPS.

Slicer stores a volume as voxels plus an IJK-to-RAS matrix; the core takes a
SimpleITK image whose origin and direction are in LPS. The two differ by a flip
of the first two world axes, ``LPS = diag(-1, -1, 1) @ RAS``. Both store the
voxels in (k, j, i) = (z, y, x) memory order, so the arrays need no transpose.
This module is the one place where that conversion is done.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

# Multiplying a RAS point by this gives the LPS point (and vice versa).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


# slicer.util's converters (they work under the slicer-core wheel), under the names the glue already uses.
matrixToNumpy = slicer.util.arrayFromVTKMatrix
numpyToMatrix = slicer.util.vtkMatrixFromArray


def ijkToRasFromVolumeNode(volumeNode, hardenTransform: bool = True) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of a volume node, in world coordinates.

    With ``hardenTransform`` a linear parent transform is applied, as Slicer shows
    the volume; a non-linear one cannot be expressed as a grid and is refused.
    """
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    matrix = matrixToNumpy(ijkToRas)
    transformNode = volumeNode.GetParentTransformNode() if hardenTransform else None
    if transformNode is not None:
        if not transformNode.IsTransformToWorldLinear():
            raise ValueError(
                f"volume '{volumeNode.GetName()}' is under the non-linear transform "
                f"'{transformNode.GetName()}'; harden or remove the transform first (expected a linear one or none)"
            )
        toWorld = vtk.vtkMatrix4x4()
        transformNode.GetMatrixTransformToWorld(toWorld)
        matrix = matrixToNumpy(toWorld) @ matrix
    return matrix


def geometryFromIjkToRas(ijkToRas: np.ndarray) -> tuple[tuple, tuple, tuple]:
    """(origin, spacing, direction) in LPS, SimpleITK order, from an IJK-to-RAS matrix.

    Raises ``ValueError`` when the matrix has shear (its columns are not orthogonal),
    which a SimpleITK image cannot hold.
    """
    linear = RAS_TO_LPS @ ijkToRas[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"IJK-to-RAS matrix has a zero column (spacing {spacing.tolist()}); expected positive spacing")
    direction = linear / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ValueError("IJK-to-RAS matrix is sheared (axes not orthogonal); expected a rigid grid. Resample the volume first.")
    origin = RAS_TO_LPS @ ijkToRas[:3, 3]
    return tuple(origin.tolist()), tuple(spacing.tolist()), tuple(direction.flatten().tolist())


def ijkToRasFromSitkImage(image: sitk.Image) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix equivalent to a SimpleITK image's LPS geometry."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    ijkToLps = np.eye(4)
    ijkToLps[:3, :3] = direction @ np.diag(image.GetSpacing())
    ijkToLps[:3, 3] = image.GetOrigin()
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ ijkToLps


def arrayFromVolumeNode(volumeNode) -> np.ndarray:
    """A copy of the node's voxels as a (z, y, x) numpy array (scalar volumes only)."""
    imageData = volumeNode.GetImageData() if volumeNode is not None else None
    if imageData is None or imageData.GetPointData().GetScalars() is None:
        name = volumeNode.GetName() if volumeNode is not None else None
        raise ValueError(f"volume {name!r} holds no image data; expected a loaded scalar volume")
    if imageData.GetNumberOfScalarComponents() != 1:
        raise ValueError(
            f"volume '{volumeNode.GetName()}' has {imageData.GetNumberOfScalarComponents()} components per voxel; "
            "expected a single-component (grayscale CT) volume"
        )
    return np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)  # (k, j, i) view of the node's voxels


def sitkImageFromVolumeNode(volumeNode, hardenTransform: bool = True) -> sitk.Image:
    """The core's input: a SimpleITK image (LPS geometry, same voxel values) of a volume node."""
    array = arrayFromVolumeNode(volumeNode)
    origin, spacing, direction = geometryFromIjkToRas(ijkToRasFromVolumeNode(volumeNode, hardenTransform))
    image = sitk.GetImageFromArray(array)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def updateVolumeNodeFromSitkImage(volumeNode, image: sitk.Image) -> None:
    """Replace a volume node's voxels and geometry with those of a SimpleITK image."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"image is {image.GetDimension()}-D with {image.GetNumberOfComponentsPerPixel()} components; "
            "expected a 3-D scalar image"
        )
    volumeNode.SetIJKToRASMatrix(numpyToMatrix(ijkToRasFromSitkImage(image)))
    slicer.util.updateVolumeFromArray(volumeNode, sitk.GetArrayFromImage(image))  # copies the (z, y, x) voxels


def addVolumeNodeFromSitkImage(scene, image: sitk.Image, name: str, labelmap: bool = False):
    """A new scalar (or labelmap) volume node in ``scene`` holding ``image``, with display nodes."""
    nodeClass = slicer.vtkMRMLLabelMapVolumeNode if labelmap else slicer.vtkMRMLScalarVolumeNode
    volumeNode = nodeClass()
    volumeNode.SetName(name)
    scene.AddNode(volumeNode)
    updateVolumeNodeFromSitkImage(volumeNode, image)
    volumeNode.CreateDefaultDisplayNodes()
    return volumeNode


def writeVolumeNodeForCore(volumeNode, path: str | Path) -> Path:
    """Write a volume node as an LPS NRRD that the core's ``load_ct`` reads.

    SimpleITK writes the file (not the Slicer IO manager), so this works
    without the application and exactly matches ``sitkImageFromVolumeNode``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitkImageFromVolumeNode(volumeNode), str(path), useCompression=True)
    return path
