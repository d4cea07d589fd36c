output "vpc_id" {
  description = "VPC id."
  value       = aws_vpc.main.id
}

output "public_subnet_ids" {
  description = "Public subnet ids, in AZ order."
  value       = aws_subnet.public[*].id
}

output "private_subnet_ids" {
  description = "Private subnet ids, in AZ order."
  value       = aws_subnet.private[*].id
}

output "data_subnet_ids" {
  description = "Data subnet ids: one per AZ, then the third MSK subnet."
  value       = aws_subnet.data[*].id
}
